#!/usr/bin/env bash
# Compiles Tally's contracts offline with the pinned solcjs (tools/node) and
# writes one artifact per contract: {"contractName","compiler","abi","bytecode"}.
#
#   contracts/build.sh            # writes contracts/out/ (committed)
#   contracts/build.sh OUT_DIR    # writes elsewhere (the determinism test)
#
# Needs node and `npm ci --prefix tools/node`. The output is byte-for-byte
# deterministic: source unit names are repository-relative, settings are fixed
# here, and the metadata hash covers only sources and settings.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/contracts/out}"
modules="$root/tools/node/node_modules"
if [ ! -f "$modules/solc/package.json" ] || [ ! -d "$modules/@openzeppelin/contracts" ]; then
  echo "contracts/build.sh: tools/node is not installed; run: npm ci --prefix tools/node" >&2
  exit 1
fi
mkdir -p "$out"
TALLY_ROOT="$root" TALLY_OUT="$out" TALLY_MODULES="$modules" node - <<'JS'
const fs = require("fs");
const path = require("path");
const root = process.env.TALLY_ROOT;
const out = process.env.TALLY_OUT;
const modules = process.env.TALLY_MODULES;
const solc = require(path.join(modules, "solc"));

// Source unit name -> file. Contract sources are named relative to contracts/.
const units = { "TallyPayout.sol": "TallyPayout.sol", "test/TestStablecoin.sol": "test/TestStablecoin.sol" };
const sources = {};
for (const [name, file] of Object.entries(units)) {
  sources[name] = { content: fs.readFileSync(path.join(root, "contracts", file), "utf8") };
}
function findImports(name) {
  if (!name.startsWith("@openzeppelin/contracts/") || name.includes("..")) {
    return { error: "import outside @openzeppelin/contracts: " + name };
  }
  try {
    return { contents: fs.readFileSync(path.join(modules, name), "utf8") };
  } catch (e) {
    return { error: "cannot read " + name + ": " + e.message };
  }
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
let failed = false;
for (const e of output.errors || []) {
  process.stderr.write(e.formattedMessage || e.message);
  if (e.severity === "error") failed = true;
}
if (failed) process.exit(1);

const wanted = [
  ["TallyPayout.sol", "TallyPayout"],
  ["test/TestStablecoin.sol", "TestStablecoin"],
];
for (const [unit, name] of wanted) {
  const c = output.contracts[unit] && output.contracts[unit][name];
  if (!c) { process.stderr.write("missing contract " + unit + ":" + name + "\n"); process.exit(1); }
  const artifact = {
    contractName: name,
    compiler: "solc-" + solc.version(),
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
  };
  fs.writeFileSync(path.join(out, name + ".json"), JSON.stringify(artifact, null, 2) + "\n");
  console.log("wrote " + path.join(out, name + ".json") + " (" + c.evm.bytecode.object.length / 2 + " bytes)");
}
JS
