import { afterEach, describe, expect, it, vi } from "vitest";
import { catalogBase, hubBase, hubEndpoint, loadCatalog } from "../../src/app/catalog";

// ?hub=OWNER/NAME[@REVISION]: index.json and every file it names come from the Hub repository's resolve URLs.
const LOCAL = "http://127.0.0.1:5173/models/";
const ENTRY = {
  name: "tiny",
  dataset: "demo",
  image_size: 16,
  num_classes: 0,
  param_count: 10,
  modes: { q8: { file: "tiny/model_q8.safetensors", bytes: 5 } },
  onnx: { decoder: { file: "tiny/model_decoder.onnx", bytes: 3, sha256: "x" } },
};

function answer(status: number, body: unknown = null) {
  const fetch = vi.fn(async () => new Response(body === null ? null : JSON.stringify(body), { status }));
  vi.stubGlobal("fetch", fetch);
  return fetch;
}

afterEach(() => vi.unstubAllGlobals());

describe("the page's ?hub= model index", () => {
  it("resolves OWNER/NAME, a revision and a local endpoint to resolve URLs", () => {
    expect(hubBase("me/web")).toBe("https://huggingface.co/me/web/resolve/main/");
    expect(hubBase("me/web@refs/pr/1")).toBe("https://huggingface.co/me/web/resolve/refs%2Fpr%2F1/");
    expect(catalogBase(LOCAL, "?hub=me/web@v2&hub_endpoint=http://127.0.0.1:8080")).toBe("http://127.0.0.1:8080/me/web/resolve/v2/");
    expect(catalogBase(LOCAL, "?models=x")).toBe(LOCAL);
    expect(() => hubBase("just-a-name")).toThrow("?hub=just-a-name is not a Hub repository");
    expect(() => hubEndpoint("https://evil.example")).toThrow("only honoured for http://127.0.0.1 or http://localhost");
  });

  it("reads index.json from the repository and makes its files absolute URLs there", async () => {
    const fetch = answer(200, [ENTRY]);
    const [entry] = await loadCatalog(LOCAL, "?hub=me/web");
    expect(String((fetch.mock.calls[0] as unknown[])[0])).toBe("https://huggingface.co/me/web/resolve/main/index.json");
    expect(entry.modes.q8!.file).toBe("https://huggingface.co/me/web/resolve/main/tiny/model_q8.safetensors");
    expect((entry as unknown as typeof ENTRY).onnx.decoder.file).toBe("https://huggingface.co/me/web/resolve/main/tiny/model_decoder.onnx");
    answer(200, [ENTRY]);
    expect((await loadCatalog(LOCAL, ""))[0].modes.q8!.file).toBe("tiny/model_q8.safetensors"); // local: unchanged
  });

  it("says what is missing when the repository, revision or index.json is not there", async () => {
    answer(401);
    await expect(loadCatalog(LOCAL, "?hub=me/none")).rejects.toThrow(
      "no exported models at https://huggingface.co/me/none/resolve/main/index.json (HTTP 401)",
    );
    answer(404);
    await expect(loadCatalog(LOCAL, "?hub=me/web@gone")).rejects.toThrow("batch_export.py --push_to_hub OWNER/NAME");
  });
});
