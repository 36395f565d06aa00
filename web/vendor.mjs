// Copies the browser builds and licences of the page's libraries from node_modules into
// examples/server/static/vendor/, where the server embeds them (the page needs no npm at run
// time). `node vendor.mjs --check` fails when the committed copies differ from the lockfile's.
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = join(here, "..", "examples", "server", "static", "vendor");

// [source under node_modules, destination under vendor/]
const files = [
  ["markdown-it/dist/browser/markdown-it.umd.min.js", "markdown-it.min.js"],
  ["@highlightjs/cdn-assets/highlight.min.js", "highlight.min.js"],
  // markdown-it's browser build bundles its dependencies: their licences travel with it.
  ["markdown-it/LICENSE", "LICENSES/markdown-it.txt"],
  ["linkify-it/LICENSE", "LICENSES/linkify-it.txt"],
  ["mdurl/LICENSE", "LICENSES/mdurl.txt"],
  ["uc.micro/LICENSE.txt", "LICENSES/uc.micro.txt"],
  ["entities/LICENSE", "LICENSES/entities.txt"],
  ["punycode.js/LICENSE-MIT.txt", "LICENSES/punycode.js.txt"],
  ["@highlightjs/cdn-assets/LICENSE", "LICENSES/highlight.js.txt"],
];

const check = process.argv.includes("--check");
let stale = 0;
for (const [from, to] of files) {
  const src = readFileSync(join(modules, from));
  const dest = join(vendor, to);
  if (check) {
    if (!existsSync(dest) || !readFileSync(dest).equals(src)) {
      console.error(`vendor: ${to} differs from node_modules/${from}`);
      stale++;
    }
  } else {
    mkdirSync(dirname(dest), { recursive: true });
    writeFileSync(dest, src);
  }
}
if (stale > 0) {
  console.error("vendor: run `npm ci && npm run vendor` in web/ and commit the result");
  process.exit(1);
}
console.log(check ? `vendor: ${files.length} files match the lockfile` : `vendor: copied ${files.length} files`);
