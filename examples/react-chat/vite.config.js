import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The chatstream server the page talks to (its `/api` routes are proxied, so the page and the
// API share an origin and no CORS is needed).
const server = process.env.CHATSTREAM_URL ?? 'http://127.0.0.1:3000';
const proxy = { '/api': { target: server, changeOrigin: true } };

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
});
