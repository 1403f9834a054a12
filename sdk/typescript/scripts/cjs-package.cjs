// Marks dist/cjs as CommonJS (the package itself is "type": "module"), so Node and TypeScript
// read its .js and .d.ts files as CommonJS.
const { writeFileSync } = require("node:fs");
const { join } = require("node:path");
writeFileSync(join(__dirname, "..", "dist", "cjs", "package.json"), '{\n  "type": "commonjs"\n}\n');
