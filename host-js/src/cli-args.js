// A small command-line parser for bin/wasm-chord.mjs (node:util's parseArgs
// refuses option values that start with '-', like `--temp -1`).

export class UsageError extends Error {}

/**
 * Parse `argv` against `spec`: `{ name: { short?, type: 'string'|'number'|'int'|'bool', default? } }`.
 * Returns `{ values, positionals }`; values are keyed by option name.
 */
export function parse(argv, spec) {
  const values = {};
  for (const [name, s] of Object.entries(spec)) {
    if (s.default !== undefined) values[name] = s.default;
  }
  const byShort = Object.fromEntries(
    Object.entries(spec).filter(([, s]) => s.short).map(([n, s]) => [s.short, n]),
  );
  const positionals = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    let name;
    let inline;
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      inline = eq < 0 ? undefined : arg.slice(eq + 1);
    } else if (arg.length === 2 && arg[0] === '-' && arg[1] !== '-' && byShort[arg[1]]) {
      name = byShort[arg[1]];
    } else if (arg.startsWith('-') && arg.length > 1 && !/^-[\d.]/.test(arg)) {
      throw new UsageError(`unexpected argument '${arg}'`);
    } else {
      positionals.push(arg);
      continue;
    }
    const s = spec[name];
    if (!s) throw new UsageError(`unexpected argument '${arg}'`);
    if (s.type === 'bool') {
      if (inline !== undefined) throw new UsageError(`'--${name}' takes no value`);
      values[name] = true;
      continue;
    }
    let raw = inline;
    if (raw === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`'${arg}' needs a value`);
      raw = argv[++i];
    }
    values[name] = convert(name, s, raw);
  }
  return { values, positionals };
}

function convert(name, s, raw) {
  if (s.type === 'string') {
    if (s.choices && !s.choices.includes(raw)) {
      throw new UsageError(`invalid value '${raw}' for '--${name}' (possible values: ${s.choices.join(', ')})`);
    }
    return raw;
  }
  const n = Number(raw);
  const ok = raw.trim() !== '' && (s.type === 'int' ? Number.isSafeInteger(n) && n >= 0 : !Number.isNaN(n));
  if (!ok) {
    const what = s.type === 'int' ? 'a non-negative integer' : 'a number';
    throw new UsageError(`invalid value '${raw}' for '--${name}': expected ${what}`);
  }
  return n;
}
