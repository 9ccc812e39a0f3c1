// Parses and runs a PHP file on old PHP versions, through the PHP.wasm
// builds of @php-wasm/node (the oldest PHP that still runs here: 5.2), for
// examples/expresso/auth_messenger_test.go.
//
//   node phplint.mjs FILE RUNTIME_SCRIPT
//
// For each version it reports {"version", "parsed", "output"}: parsed is
// whether FILE compiles (the equivalent of php -l: the file is compiled by
// eval behind a return, so none of it runs), output is what RUNTIME_SCRIPT
// (PHP code that includes /src/file.php) prints, with every error shown.
import { loadNodeRuntime } from '@php-wasm/node';
import { PHP } from '@php-wasm/universal';
import { readFileSync } from 'node:fs';

const [file, runtimeScript] = process.argv.slice(2);
const src = readFileSync(file, 'utf8');
const runtime = readFileSync(runtimeScript, 'utf8');
const versions = ['5.2', '7.4', '8.0', '8.1', '8.2', '8.3', '8.4', '8.5'];
const ini = "error_reporting(E_ALL); ini_set('display_errors', '1'); ini_set('html_errors', '0');";

// exec runs code; a fatal error (exit code 255) is an answer, not a crash.
async function exec(php, code) {
  try {
    const r = await php.run({ code });
    return r.text + r.errors;
  } catch (e) {
    if (!e.response) throw e;
    return e.response.text + e.response.errors;
  }
}

async function fresh(version) {
  const php = new PHP(await loadNodeRuntime(version, { emscriptenOptions: { processId: 1 } }));
  php.mkdir('/src');
  php.writeFile('/src/file.php', src);
  return php;
}

const results = [];
for (const version of versions) {
  let php = await fresh(version);
  const lint = await exec(php,
    `<?php ${ini} $ok = eval('return true; ?>' . file_get_contents('/src/file.php')); echo $ok === true ? 'PARSED' : 'NOT PARSED';`);
  php.exit();
  php = await fresh(version);
  php.writeFile('/src/runtime.php', runtime);
  const output = await exec(php, `<?php ${ini} require '/src/runtime.php';`);
  php.exit();
  results.push({
    version,
    parsed: lint.trim() === 'PARSED',
    lint,
    output,
  });
}
process.stdout.write(JSON.stringify(results) + '\n');
