import { defineConfig } from "vite";

// Where `npm run dev` forwards /ws and /healthz, so the page's same-origin default reaches
// a local `ferry serve` while developing.
const devRelay = process.env.DASHBOARD_DEV_RELAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  // Every asset URL in dist/ is relative, so one build works from ferry itself (served
  // at `/`), from a sub-path, and from any static host.
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // A single small app: one JS chunk and one CSS file load fastest.
    chunkSizeWarningLimit: 200,
  },
  server: {
    host: "127.0.0.1",
    port: 5173,
    proxy: {
      "/ws": { target: devRelay, ws: true, changeOrigin: true },
      "/healthz": { target: devRelay, changeOrigin: true },
    },
  },
  preview: { host: "127.0.0.1", port: 4173 },
});
