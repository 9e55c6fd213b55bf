import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The build goes into the Python package (fieldgate/cloud/api/rest/static/dashboard; fieldgate/cloud is
// a symlink to ../cloud), which serves it at / with a strict Content-Security-Policy: no inline
// scripts or styles, so the build emits only files (hashed, under /assets/).
export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: fileURLToPath(new URL("../cloud/api/rest/static/dashboard", import.meta.url)),
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 1000,
  },
  server: { proxy: { "/api": "http://127.0.0.1:8080" } },
});
