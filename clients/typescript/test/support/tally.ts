// Runs a real `tally serve` for the tests: ports 0, a ready file polled with a
// bounded loop, the CLI for registration and balances, kill by pid in teardown.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

export const NETWORK = "tally:test";

export function tallyBin(): string {
  if (process.env.TALLY_BIN) {
    return process.env.TALLY_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache", "tally-target");
  return join(target, "debug", "tally");
}

interface ReadyFile {
  grpc_addr: string;
  http_addr: string;
  metrics_addr: string;
  admin_addr: string | null;
  pid: number;
}

export interface BalanceRow {
  payer: string;
  payee: string;
  asset: string;
  epoch: number;
  ious: number;
  amount_units: string;
  amount: string;
  scale: number;
}

export class Tally {
  private constructor(
    readonly dataDir: string,
    readonly token: string,
    readonly ready: ReadyFile,
    private readonly child: ChildProcess,
    private readonly stderr: () => string,
  ) {}

  /** The HTTP facilitator's base URL. */
  get facilitatorUrl(): string {
    return `http://${this.ready.http_addr}`;
  }

  static async start(): Promise<Tally> {
    const bin = tallyBin();
    if (!existsSync(bin)) {
      throw new Error(`tally binary not found at ${bin}: set TALLY_BIN or build it`);
    }
    const dir = mkdtempSync(join(tmpdir(), "tally-ts-"));
    const readyFile = join(dir, "ready.json");
    const token = randomBytes(16).toString("hex");
    const child = spawn(
      bin,
      [
        "serve",
        "--data-dir", join(dir, "data"),
        "--grpc-addr", "127.0.0.1:0",
        "--metrics-addr", "127.0.0.1:0",
        "--http-addr", "127.0.0.1:0",
        "--network", NETWORK,
        "--ready-file", readyFile,
      ],
      {
        env: { ...process.env, TALLY_ADMIN_TOKEN: token, TALLY_LOG: "warn" },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    let exited: number | null | undefined;
    child.on("exit", (code) => {
      exited = code;
    });
    // Bounded poll for the ready file (up to 30 s), failing fast if tally exits.
    for (let i = 0; i < 1500; i++) {
      if (exited !== undefined) {
        throw new Error(`tally serve exited with ${String(exited)}: ${stderr}`);
      }
      if (existsSync(readyFile)) {
        const text = readFileSync(readyFile, "utf8");
        if (text.trim().endsWith("}")) {
          const ready = JSON.parse(text) as ReadyFile;
          return new Tally(dir, token, ready, child, () => stderr);
        }
      }
      await delay(20);
    }
    child.kill("SIGKILL");
    throw new Error(`tally serve did not become ready: ${stderr}`);
  }

  /** Runs a `tally` CLI command against this engine; resolves to its stdout. */
  cli(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        tallyBin(),
        [...args, "--server", `http://${this.ready.grpc_addr}`],
        { env: { ...process.env, TALLY_ADMIN_TOKEN: this.token, TALLY_LOG: "warn" }, timeout: 30_000 },
        (error, stdout, stderr) => {
          if (error) {
            reject(new Error(`tally ${args.join(" ")} failed: ${error.message}\n${stderr}`));
          } else {
            resolve(stdout);
          }
        },
      );
    });
  }

  /** `tally balance --json` rows, optionally for one payee and/or payer. */
  async balance(filter: { payee?: string; payer?: string } = {}): Promise<BalanceRow[]> {
    const args = ["balance", "--json"];
    if (filter.payee) args.push("--payee", filter.payee);
    if (filter.payer) args.push("--payer", filter.payer);
    const out = JSON.parse(await this.cli(...args)) as { rows: BalanceRow[]; truncated: boolean };
    return out.rows;
  }

  /** The number of IOUs and their total charge (smallest units) in the ledger for a filter. */
  async totals(filter: { payee?: string; payer?: string }): Promise<{ ious: number; units: bigint }> {
    const rows = await this.balance(filter);
    return {
      ious: rows.reduce((n, r) => n + r.ious, 0),
      units: rows.reduce((n, r) => n + BigInt(r.amount_units), 0n),
    };
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
      process.kill(this.ready.pid, "SIGTERM");
      const timer = new AbortController();
      const timedOut = await Promise.race([
        exited.then(() => false),
        delay(10_000, true, { signal: timer.signal }).catch(() => false),
      ]);
      timer.abort();
      if (timedOut) {
        process.kill(this.ready.pid, "SIGKILL");
        await exited;
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** What tally wrote to stderr (for failure messages). */
  logs(): string {
    return this.stderr();
  }
}
