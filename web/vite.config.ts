import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// The build lands in dist/, which `cargo build` embeds into the server (crates/bandsox-server/build.rs).
export default defineConfig({
  plugins: [preact({ prefreshEnabled: false, devToolsEnabled: false })],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  server: { proxy: { "/api": { target: "http://127.0.0.1:8000", ws: true } } },
});
