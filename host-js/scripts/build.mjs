// `npm run build`: transpile the kernel component with jco into gen/.
// The kernel comes from $WASM_CHORD_KERNEL, else the default cargo location
// ($CARGO_TARGET_DIR or ~/.cache/wasm-chord/target, release/wasm-chord-kernel.wasm).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

function kernelPath() {
  if (process.env.WASM_CHORD_KERNEL) return process.env.WASM_CHORD_KERNEL;
  const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/wasm-chord/target');
  return path.join(target, 'release', 'wasm-chord-kernel.wasm');
}

const wasm = kernelPath();
if (!fs.existsSync(wasm)) {
  console.error(`error: no kernel component at '${wasm}': run \`cargo xtask build\` or set WASM_CHORD_KERNEL`);
  process.exit(1);
}
const out = path.join(root, 'gen');
fs.rmSync(out, { recursive: true, force: true });

const jco = path.join(root, 'node_modules', '.bin', process.platform === 'win32' ? 'jco.cmd' : 'jco');
const args = [
  'transpile', wasm,
  '--out-dir', out,
  '--name', 'kernel',
  // Our JS module implements the import; the rest (WASI) goes to preview2-shim.
  '--map', 'wasm-chord:runtime/layer-store=../src/layer-store.js',
  '--quiet',
];
console.log(`jco ${args.join(' ')}`);
const r = spawnSync(jco, args, { stdio: 'inherit' });
if (r.status !== 0) {
  console.error(`error: jco transpile failed (${r.error?.message ?? `exit ${r.status}`})`);
  process.exit(1);
}
console.log(`kernel transpiled into ${path.relative(process.cwd(), out) || '.'}/`);
