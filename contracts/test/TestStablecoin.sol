// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// A test stablecoin: OpenZeppelin's audited ERC-20 (4.9.6), 6 decimals like
/// USDC, with the whole supply minted to the deployer. Test networks only.
contract TestStablecoin is ERC20 {
    constructor(uint256 initialSupply) ERC20("Tally Test USD", "tUSD") {
        _mint(msg.sender, initialSupply);
    }

    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
