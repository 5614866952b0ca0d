#!/usr/bin/env node
// wasm-chord for Node: a launcher of the one command line, the composed
// wasm-chord-app.wasm (guest/cli ∘ kernel, a wasi:cli/run command; the same
// component the native launcher runs) transpiled by jco into gen/app/ (`npm run
// build`). This file only supplies what a host supplies: the `layer-store`
// import (NodeFileStore: model names are host paths), argv, stdio, preopens,
// and the exit code.
//
// Preopens (the same rule as the native launcher): the current directory as
// `.` and under its absolute path, and the directory of every argument that
// names an existing file or whose parent directory exists, under its absolute
// path (and, when the argument was relative, also under that relative
// directory as written), so that relative and absolute paths work as with any
// command-line tool. Nothing else of the file system is visible to the guest.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { _setArgs, _setCwd, _setEnv } from '@bytecodealliance/preview2-shim/cli';
import { _setPreopens, types } from '@bytecodealliance/preview2-shim/filesystem';
import { setModelStore } from '../src/layer-store.js';
import { NodeFileStore } from '../src/stores/node-file.js';

const APP = fileURLToPath(new URL('../gen/app/app.js', import.meta.url));

// wasi-libc asks for `mutate-directory` on every file it opens for writing
// (O_CREAT); wasmtime grants it, preview2-shim (0.26) answers "unsupported" —
// so a guest could not create an output file (a KL-divergence base file).
// The flag only means something for directories: drop it for file opens.
function allowFileCreation() {
  const openAt = types.Descriptor.prototype.openAt;
  types.Descriptor.prototype.openAt = function (pathFlags, p, openFlags, descriptorFlags) {
    const flags = !openFlags.directory && descriptorFlags.mutateDirectory
      ? { ...descriptorFlags, mutateDirectory: false }
      : descriptorFlags;
    return openAt.call(this, pathFlags, p, openFlags, flags);
  };
}

/** Directories to preopen, as { guest path: host path }. */
export function preopensFor(argv, cwd = process.cwd()) {
  const dirs = { '.': cwd, [cwd]: cwd };
  for (const arg of argv) {
    // `--flag=value` carries a path too.
    const value = arg.startsWith('--') && arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : arg;
    if (value === '' || value.startsWith('-') || value.includes('\n')) continue;
    const abs = path.resolve(cwd, value);
    let dir;
    try {
      dir = fs.statSync(abs).isDirectory() ? abs : path.dirname(abs);
    } catch {
      // Not there (yet): an output file in an existing directory.
      if (!value.includes('/')) continue;
      dir = path.dirname(abs);
      try {
        if (!fs.statSync(dir).isDirectory()) continue;
      } catch {
        continue;
      }
    }
    dirs[dir] = dir;
    if (!path.isAbsolute(value)) {
      const rel = path.relative(cwd, dir);
      if (rel !== '' && !(rel in dirs)) dirs[rel] = dir;
    }
  }
  return dirs;
}

/** Run the CLI component on `argv`; resolves to the exit code. */
async function runComponent(argv) {
  if (!fs.existsSync(APP)) {
    console.error(`error: the CLI component is not transpiled ('${APP}' missing): run \`npm run build\``);
    return 1;
  }
  _setArgs(['wasm-chord', ...argv]);
  _setEnv({});
  _setCwd('/');
  _setPreopens(preopensFor(argv));
  setModelStore(new NodeFileStore());
  allowFileCreation();
  let cli;
  try {
    cli = await import(APP);
  } catch (e) {
    console.error(`error: cannot instantiate the CLI component: ${e.message ?? e}`);
    return 1;
  }
  try {
    // wasi:cli/exit calls process.exit itself (the shim's exit: 0 for ok, 1 for err).
    cli.run.run();
    return 0;
  } catch (e) {
    if (e instanceof WebAssembly.RuntimeError) {
      console.error(`error: the wasm-chord component trapped: ${e.message}`);
      return 1;
    }
    // `run` returned `err` without an exit call: the guest has reported it.
    if (e?.name === 'ComponentError' || e?.payload !== undefined) return 1;
    console.error(`error: ${e?.message ?? e}`);
    return 1;
  }
}

async function main(argv) {
  return runComponent(argv);
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.stdout.on('error', (e) => process.exit(e.code === 'EPIPE' ? 0 : 1));
  process.exitCode = await main(process.argv.slice(2));
}
