// Runs one commander subcommand in-process with captured output and failures, for command tests.
import { Writable } from "node:stream";
import { Command } from "commander";
import type { EvalCommandIo } from "#server/eval/eval_command.ts";

function sink(): Writable & { text: string } {
  const s = new Writable({
    write(chunk, _enc, cb) {
      s.text += String(chunk);
      cb();
    },
  }) as Writable & { text: string };
  s.text = "";
  return s;
}

/** Registers a command with captured io, runs `name args...`, returns what it printed and failed with. */
export async function runCommand(register: (program: Command, io: EvalCommandIo) => unknown, name: string, args: string[]) {
  const stdout = sink();
  const stderr = sink();
  const failures: string[] = [];
  const errors: unknown[] = [];
  const program = new Command().exitOverride();
  register(program, {
    stdout,
    stderr,
    fail: (m, e) => {
      failures.push(m);
      errors.push(e);
    },
  });
  await program.parseAsync([name, ...args], { from: "user" });
  return { stdout: stdout.text, stderr: stderr.text, failures, errors };
}
