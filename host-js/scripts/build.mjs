// `npm run build`: transpile the kernel component with jco into gen/ (Node,
// bundlers) and gen/browser/ (unbundled Web Workers).
// The kernel comes from $WASM_CHORD_KERNEL, the composed CLI from $WASM_CHORD_APP (default:
// wasm-chord-app.wasm beside the kernel), else the default cargo location
// ($CARGO_TARGET_DIR or ~/.cache/wasm-chord/target, release/wasm-chord-kernel.wasm).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
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

function transpile(dir, maps, component = wasm, name = 'kernel') {
  const args = ['transpile', component, '--out-dir', dir, '--name', name, '--quiet'];
  for (const m of maps) args.push('--map', m);
  console.log(`jco ${args.join(' ')}`);
  const r = spawnSync(jco, args, { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`error: jco transpile failed (${r.error?.message ?? `exit ${r.status}`})`);
    process.exit(1);
  }
}

// gen/: for Node and bundlers. Our JS module implements the layer-store
// import; WASI imports go to the bare '@bytecodealliance/preview2-shim/*'
// specifiers (resolved with the package's node/browser export conditions).
transpile(out, ['wasm-chord:runtime/layer-store=../src/layer-store.js']);

// gen/browser/: for unbundled module workers, which have no import maps:
// the same kernel with WASI imports mapped to the shim's browser files by path.
const browserOut = path.join(out, 'browser');
// (the package resolves to dist/nodejs/index.js here; its browser files are beside.)
const shimNode = createRequire(import.meta.url).resolve('@bytecodealliance/preview2-shim');
const shimBrowser = path.join(path.dirname(path.dirname(shimNode)), 'browser');
const shim = path.relative(browserOut, shimBrowser).split(path.sep).join('/');
transpile(browserOut, [
  'wasm-chord:runtime/layer-store=../../src/layer-store.js',
  ...['cli', 'clocks', 'filesystem', 'http', 'io', 'random', 'sockets']
    .map((pkg) => `wasi:${pkg}/*=${shim}/${pkg}.js#*`),
]);
// gen/relaxed/ (and gen/relaxed/browser/): the relaxed-SIMD kernel
// (wasm-chord-kernel-relaxed.wasm beside the kernel, or
// $WASM_CHORD_KERNEL_RELAXED), which src/kernel.js takes when the engine's
// WebAssembly.validate accepts relaxed SIMD; gen/relaxed.js says it is there.
const relaxed = process.env.WASM_CHORD_KERNEL_RELAXED
  || path.join(path.dirname(wasm), 'wasm-chord-kernel-relaxed.wasm');
const relaxedOut = path.join(out, 'relaxed');
if (fs.existsSync(relaxed)) {
  transpile(relaxedOut, ['wasm-chord:runtime/layer-store=../../src/layer-store.js'], relaxed);
  const relaxedBrowser = path.join(relaxedOut, 'browser');
  const shimR = path.relative(relaxedBrowser, shimBrowser).split(path.sep).join('/');
  transpile(relaxedBrowser, [
    'wasm-chord:runtime/layer-store=../../../src/layer-store.js',
    ...['cli', 'clocks', 'filesystem', 'http', 'io', 'random', 'sockets']
      .map((pkg) => `wasi:${pkg}/*=${shimR}/${pkg}.js#*`),
  ], relaxed);
}
fs.writeFileSync(path.join(out, 'relaxed.js'), `export const built = ${fs.existsSync(relaxed)};\n`);

// gen/app/: the one command line that bin/wasm-chord.mjs runs: the composed
// wasm-chord-app.wasm (guest/cli ∘ kernel, `cargo xtask build` makes it), the
// same component the native launcher runs; its layer-store import goes to our
// JS module, WASI to the preview2-shim (node).
const app = process.env.WASM_CHORD_APP
  || path.join(path.dirname(wasm), 'wasm-chord-app.wasm');
if (fs.existsSync(app)) {
  transpile(path.join(out, 'app'), ['wasm-chord:runtime/layer-store=../../src/layer-store.js'], app, 'app');
} else {
  console.error(`warning: no composed CLI component at '${app}' (run \`cargo xtask build\` or set WASM_CHORD_APP): bin/wasm-chord.mjs will not work`);
}
console.log(`kernel transpiled into ${path.relative(process.cwd(), out) || '.'}/ and ${path.relative(process.cwd(), browserOut)}/`);
