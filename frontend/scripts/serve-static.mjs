// A tiny static file server for the built page: each URL prefix maps to a folder (first match wins).
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".json": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".wasm": "application/wasm",
  ".safetensors": "application/octet-stream",
};

/** Serve `routes` ([[urlPrefix, folder], ...]) on 127.0.0.1; resolves to { url, close }. */
export async function serveStatic(routes) {
  const server = http.createServer((request, response) => {
    const url = decodeURIComponent(new URL(request.url, "http://x").pathname);
    for (const [prefix, folder] of routes) {
      if (!url.startsWith(prefix)) continue;
      let file = path.join(folder, url.slice(prefix.length));
      if (!file.startsWith(path.resolve(folder))) break;
      if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
      if (!fs.existsSync(file)) continue;
      const body = fs.readFileSync(file);
      response.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream", "content-length": body.length });
      response.end(body);
      return;
    }
    response.writeHead(404, { "content-type": "text/plain" });
    response.end("not found");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((resolve) => server.close(resolve)) };
}
