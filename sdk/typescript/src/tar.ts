/** A build context folder as a tar (POSIX ustar, PAX records for long names), in memory. */

import { lstat, readFile, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";

const BLOCK = 512;

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name: string, size: number, mode: number, mtime: number, type: string, link = ""): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, "utf8");
  h.write(octal(mode & 0o7777, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii");
  h.write(octal(0, 8), 116, "ascii");
  h.write(octal(size, 12), 124, "ascii");
  h.write(octal(Math.max(0, Math.floor(mtime)), 12), 136, "ascii");
  h.write("        ", 148, "ascii"); // checksum field counts as spaces
  h.write(type, 156, "ascii");
  h.write(link, 157, 100, "utf8");
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + " ", 148, "ascii");
  return h;
}

function padded(data: Buffer): Buffer[] {
  const rest = data.length % BLOCK;
  return rest ? [data, Buffer.alloc(BLOCK - rest)] : [data];
}

/** A PAX extended header carrying `path`/`linkpath` when they do not fit the ustar fields. */
function pax(name: string, link: string): Buffer[] {
  const records: string[] = [];
  for (const [k, v] of [
    ["path", name],
    ["linkpath", link],
  ] as const) {
    if (Buffer.byteLength(v) < 100) continue;
    const body = ` ${k}=${v}\n`;
    const base = Buffer.byteLength(body);
    // The length counts its own digits.
    let len = base + String(base).length;
    while (len !== base + String(len).length) len = base + String(len).length;
    records.push(`${len}${body}`);
  }
  if (!records.length) return [];
  const data = Buffer.from(records.join(""), "utf8");
  return [header("././@PaxHeader", data.length, 0o644, 0, "x"), ...padded(data)];
}

/**
 * The folder `root` as a tar: folders, regular files and symbolic links (as links, never
 * followed), depth first in name order, paths relative to `root`. Other kinds (sockets,
 * FIFOs, devices) are left out. The server applies the context's `.dockerignore`.
 */
export async function packContext(root: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(root, rel))).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const full = join(root, r);
      const st = await lstat(full);
      const mtime = st.mtimeMs / 1000;
      if (st.isDirectory()) {
        parts.push(...pax(`${r}/`, ""), header(`${r}/`.slice(0, 100), 0, st.mode, mtime, "5"));
        await walk(r);
      } else if (st.isSymbolicLink()) {
        const link = await readlink(full);
        parts.push(...pax(r, link), header(r.slice(0, 100), 0, 0o777, mtime, "2", link.slice(0, 100)));
      } else if (st.isFile()) {
        const data = await readFile(full);
        parts.push(...pax(r, ""), header(r.slice(0, 100), data.length, st.mode, mtime, "0"), ...padded(data));
      }
    }
  };
  await walk("");
  parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}
