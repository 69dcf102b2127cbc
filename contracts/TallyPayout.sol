// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title TallyPayout: batch ERC-20 payouts with on-chain idempotency.
/// @notice Tally's settler pays a netted epoch as a few `payBatch` calls. Each
/// call moves tokens straight from the caller (the treasury) to each payee with
/// `transferFrom(msg.sender, recipient, amount)`, and records the batch id so
/// the same batch can never be paid twice, whatever the settler retries.
///
/// Design rules, each on purpose:
/// - No owner, no upgradability, no admin function: nothing to trust but this code.
/// - Holds no funds: tokens go from the payer to the recipients in one hop, so a
///   bug here can never strand or leak a balance of its own.
/// - Spends only the allowance of `msg.sender`. A generic batcher such as
///   Multicall3 must never be approved: its calls run with the batcher as
///   `msg.sender`, so anyone could make it call `transferFrom(treasury, attacker, x)`
///   and spend the treasury's allowance. Here the `from` of every transfer is
///   always the caller itself, so an allowance given to this contract can only
///   be spent by the account that gave it.
contract TallyPayout {
    /// The block in which `payer` executed `batchId`; zero when it never did.
    /// Keyed by payer first: a batch id is only meaningful inside the treasury
    /// that chose it. With a global key anyone who saw a treasury's pending
    /// transaction (or guessed its next id) could front-run it with a one-wei
    /// batch under the same id and make the real payout revert forever ("squat"
    /// the id). Keyed per sender, an id can only be consumed by its own payer.
    /// Storing the block (not a bool) costs the same SSTORE and lets an
    /// off-chain reader find the `BatchPaid` log without scanning the chain.
    mapping(address => mapping(bytes32 => uint256)) public executedBlock;

    event BatchPaid(
        address indexed payer, bytes32 indexed batchId, address indexed token, uint256 count, uint256 total
    );

    error EmptyBatch();
    error LengthMismatch(uint256 recipients, uint256 amounts);
    error AlreadyExecuted(address payer, bytes32 batchId);
    error NotAContract(address token);
    error ZeroRecipient(uint256 index);
    error ZeroAmount(uint256 index);
    error TransferFailed(uint256 index);

    /// True once `payer` has executed `batchId`.
    function executed(address payer, bytes32 batchId) external view returns (bool) {
        return executedBlock[payer][batchId] != 0;
    }

    /// Pays `amounts[i]` of `token` from the caller to `recipients[i]`, for every i,
    /// or nothing at all (any failure reverts the whole batch, including the mark).
    function payBatch(bytes32 batchId, address token, address[] calldata recipients, uint256[] calldata amounts)
        external
    {
        uint256 n = recipients.length;
        if (n == 0) revert EmptyBatch();
        if (n != amounts.length) revert LengthMismatch(n, amounts.length);
        if (executedBlock[msg.sender][batchId] != 0) revert AlreadyExecuted(msg.sender, batchId);
        // A call to an address without code "succeeds" with empty return data,
        // which the no-bool rule below would take for a successful transfer.
        if (token.code.length == 0) revert NotAContract(token);

        // Checks-effects-interactions: mark the batch before any external call,
        // so a re-entrant token cannot pay the same batch id twice. (A token that
        // re-enters with another batch id only spends its caller's own allowance,
        // which the caller chose to give to a token it chose.)
        executedBlock[msg.sender][batchId] = block.number;

        uint256 total = 0;
        for (uint256 i = 0; i < n; ++i) {
            address to = recipients[i];
            uint256 amount = amounts[i];
            if (to == address(0)) revert ZeroRecipient(i);
            if (amount == 0) revert ZeroAmount(i);
            total += amount; // checked: overflow reverts
            _safeTransferFrom(token, msg.sender, to, amount, i);
        }
        emit BatchPaid(msg.sender, batchId, token, n, total);
    }

    /// `transferFrom` that accepts both ERC-20 conventions: tokens that return
    /// `true`, and older tokens (USDT on mainnet) that return nothing. A call that
    /// reverts, returns `false`, or returns something that is not one bool fails.
    /// A token's own revert reason (e.g. "ERC20: insufficient allowance") is
    /// passed through unchanged; a silent failure becomes `TransferFailed(index)`.
    function _safeTransferFrom(address token, address from, address to, uint256 amount, uint256 index) private {
        (bool ok, bytes memory ret) = token.call(abi.encodeWithSelector(0x23b872dd, from, to, amount));
        if (!ok) {
            if (ret.length != 0) {
                assembly ("memory-safe") {
                    revert(add(ret, 32), mload(ret))
                }
            }
            revert TransferFailed(index);
        }
        if (ret.length != 0) {
            if (ret.length != 32 || abi.decode(ret, (uint256)) != 1) revert TransferFailed(index);
        }
    }
}
