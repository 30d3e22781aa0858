// The `spatial-sam` command line: serve, demo, info, convert, sdf, segment, eval, report. Training (adapt) is Python: `python -m spatialsam adapt` in models/
// Commands import their heavy modules (ONNX Runtime, format drivers) when they run, so --help is quick.
import { Command, Option } from "commander";
import { list, serverOptions, startFromCli, type ServerCliOptions } from "#server/cli_options.ts";
import { isSpatialSamError } from "#src/errors.ts";
import { registerEvalCommand } from "#server/eval/eval_command.ts";
import { registerReportCommand } from "#server/eval/report_command.ts";
import { registerSdfCommand } from "#server/engine/sdf_command.ts";
import { registerConvertCommand } from "#server/volume/convert_command.ts";
import { registerSegmentCommand } from "#server/engine/segment_command.ts";

export function buildProgram(): Command {
  const program = new Command("spatial-sam")
    .description("Spatial-SAM: promptable 3D mitochondria segmentation with SDF memory")
    .version("0.1.0")
    .showHelpAfterError();

  serverOptions(program.command("serve").description("run the gRPC inference server and its HTTP side")).action(
    async (o: ServerCliOptions) => {
      const running = await startFromCli(o);
      process.stdout.write(`gRPC ${running.grpc.address}${running.httpPort === undefined ? "" : `, HTTP http://${o.host}:${running.httpPort}`}\n`);
    },
  );

  program
    .command("info")
    .description("print a volume's metadata (format, dtype, scales, chunking, voxel size)")
    .argument("<volume-url>", "e.g. zarr://file:///data/em.zarr, precomputed://https://host/path, png:///data/stack")
    .addOption(new Option("--roots <dirs>", "comma-separated folders file:// URLs may read").default(["/"]).argParser(list).env("SPATIAL_SAM_ROOTS"))
    .option("--json", "print JSON instead of a table")
    .action(async (url: string, o: { roots: string[]; json?: boolean }) => {
      const { openVolume } = await import("#server/volume/open_volume.ts");
      const v = await openVolume(url, { roots: o.roots });
      try {
        const m = v.metadata;
        if (o.json) {
          process.stdout.write(`${JSON.stringify(m, (_k, x) => (typeof x === "bigint" ? x.toString() : x), 2)}\n`);
          return;
        }
        process.stdout.write(`format ${m.format}, dtype ${m.dtype}, kind ${m.kind}, fill ${String(m.fillValue)}\n`);
        process.stdout.write("scale  key             shape (z,y,x)         voxel nm (z,y,x)     chunk (z,y,x)      offset (z,y,x)\n");
        for (const s of m.scales) {
          process.stdout.write(
            `${String(s.index).padEnd(6)} ${s.key.padEnd(15)} ${s.shapeZyx.join(" x ").padEnd(21)} ${s.voxelSizeNm.join(" x ").padEnd(20)} ${s.chunkShapeZyx.join(" x ").padEnd(18)} ${s.offsetZyx.join(", ")}\n`,
          );
        }
      } finally {
        await v.close();
      }
    });

  serverOptions(
    program
      .command("demo")
      .description("generate the demo volume (synthetic FIB-SEM with mitochondria) and serve it")
      .option("--demo-dir <dir>", "where the demo volume is written", ".cache/demo"),
  ).action(async (o: ServerCliOptions & { demoDir: string }) => {
    const { runDemo } = await import("#server/demo.ts");
    await runDemo(o);
  });

  registerEvalCommand(program);
  registerReportCommand(program);
  registerSdfCommand(program);
  registerConvertCommand(program);
  registerSegmentCommand(program);

  return program;
}

// Run when executed directly (node --import tsx server/cli.ts ..., or the bin wrapper).
const entry = process.argv[1] ?? "";
if (entry.endsWith("cli.ts") || entry.endsWith("spatial-sam.js") || entry.endsWith("spatial-sam")) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => {
      process.stderr.write(`spatial-sam: ${isSpatialSamError(e) || e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    });
}
