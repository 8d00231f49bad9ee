import { execFile } from "node:child_process";
import { createPrivateKey, randomUUID, sign, type KeyObject } from "node:crypto";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";

import { zeroHash } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { BatonClient } from "../../sdk/client.ts";
import { ImageResolutionError, UserError } from "../../sdk/errors.ts";
import { imageDigestFromBytes32, imageDigestToBytes32, jobImageDigest } from "../../sdk/images/digest.ts";
import {
  formatImageReference,
  imageKey,
  isLoopbackRegistry,
  parseImageReference,
  pinImageReference,
} from "../../sdk/images/reference.ts";
import {
  MANIFEST_MEDIA_TYPES,
  parseBearerChallenge,
  pinJobImage,
  registryEndpoint,
  resolveImageDigest,
} from "../../sdk/images/registry.ts";
import { throwawayPodman, type ThrowawayPodman } from "../helpers/podman.ts";
import { installed, startRegistry, type Registry } from "../helpers/registry.ts";

const DIGEST = `sha256:${"ab".repeat(32)}` as const;

describe("parseImageReference: as Docker reads a reference", () => {
  it.each([
    ["busybox", { registry: "docker.io", repository: "library/busybox" }],
    ["busybox:1.36", { registry: "docker.io", repository: "library/busybox", tag: "1.36" }],
    [
      "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
      { registry: "docker.io", repository: "pytorch/pytorch", tag: "2.4.0-cuda12.4-cudnn9-runtime" },
    ],
    ["docker.io/busybox", { registry: "docker.io", repository: "library/busybox" }],
    ["index.docker.io/library/busybox:latest", { registry: "docker.io", repository: "library/busybox", tag: "latest" }],
    ["ghcr.io/org/team/tool:v1", { registry: "ghcr.io", repository: "org/team/tool", tag: "v1" }],
    ["127.0.0.1:5000/x:tag", { registry: "127.0.0.1:5000", repository: "x", tag: "tag" }],
    ["localhost/x", { registry: "localhost", repository: "x" }],
    ["[::1]:5000/x:tag", { registry: "[::1]:5000", repository: "x", tag: "tag" }],
    ["localhost:5000/a/b", { registry: "localhost:5000", repository: "a/b" }],
    ["registry:5000/x", { registry: "registry:5000", repository: "x" }],
    ["my_org/my-image__x.y", { registry: "docker.io", repository: "my_org/my-image__x.y" }],
    [`busybox@${DIGEST}`, { registry: "docker.io", repository: "library/busybox", digest: DIGEST }],
    [`127.0.0.1:5000/x:tag@${DIGEST}`, { registry: "127.0.0.1:5000", repository: "x", tag: "tag", digest: DIGEST }],
  ])("%s", (text, expected) => {
    expect(parseImageReference(text)).toEqual(expected);
  });

  it.each([
    ["", /empty/],
    ["Busybox", /lower-case/],
    ["busybox:", /tag ""/],
    ["busybox:-x", /tag "-x"/],
    ["busybox@sha256:abc", /digest/],
    [`busybox@md5:${"ab".repeat(16)}`, /digest/],
    [`busybox@sha256:${"AB".repeat(32)}`, /digest/],
    ["a//b", /repository/],
    ["-x", /repository/],
    ["x/", /repository/],
    ["host:port:9/x", /registry host/],
    ["host:99999999/x", /registry host/],
    ["busybox:has space", /tag/],
    [`x:${"t".repeat(129)}`, /tag/],
    ["x".repeat(513), /longer than 512/],
  ])("refuses %j", (text, message) => {
    expect(() => parseImageReference(text)).toThrow(UserError);
    expect(() => parseImageReference(text)).toThrow(message);
  });

  it("writes a reference back in full, and pins it without its tag", () => {
    const reference = parseImageReference("busybox:1.36");
    expect(formatImageReference(reference)).toBe("docker.io/library/busybox:1.36");
    expect(pinImageReference(reference, DIGEST)).toBe(`docker.io/library/busybox@${DIGEST}`);
    expect(formatImageReference(parseImageReference(`127.0.0.1:5000/x:t@${DIGEST}`))).toBe(
      `127.0.0.1:5000/x:t@${DIGEST}`,
    );
  });

  it.each([
    ["127.0.0.1:5000", true],
    ["127.3.2.1", true],
    ["localhost", true],
    ["localhost:5000", true],
    ["[::1]:5000", true],
    ["10.0.0.1:5000", false],
    ["localhost.example.com", false],
    ["docker.io", false],
  ])("isLoopbackRegistry(%s) is %s", (registry, loopback) => {
    expect(isLoopbackRegistry(registry)).toBe(loopback);
  });

  it("imageKey: a pinned reference in full without its tag, a CID prefixed cid:", () => {
    expect(imageKey(`busybox@${DIGEST}`)).toBe(`docker.io/library/busybox@${DIGEST}`);
    expect(imageKey(`127.0.0.1:5000/x:tag@${DIGEST}`)).toBe(`127.0.0.1:5000/x@${DIGEST}`);
    expect(imageKey({ cid: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" })).toBe(
      "cid:bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
    );
    // Not pinned: it keeps its tag, and so matches no provider's key.
    expect(imageKey("busybox")).toBe("docker.io/library/busybox");
  });
});

describe("a job's image as its quotes name it", () => {
  /** A registry reference is named by its own digest: no store is read (a layout by CID: images-layout.test.ts). */
  const noStore = {} as Pick<BatonClient, "ipfs">;

  it("a pinned reference by its digest, a process job by nothing; as bytes32, zero for nothing, both ways", async () => {
    expect(await jobImageDigest(noStore, `127.0.0.1:5000/baton/train:v1@${DIGEST}`)).toBe(DIGEST);
    expect(await jobImageDigest(noStore, undefined)).toBeUndefined();
    expect(imageDigestToBytes32(DIGEST)).toBe(`0x${"ab".repeat(32)}`);
    expect(imageDigestToBytes32(undefined)).toBe(zeroHash);
    expect(imageDigestFromBytes32(`0x${"AB".repeat(32)}`)).toBe(DIGEST);
    expect(imageDigestFromBytes32(zeroHash)).toBeUndefined();
  });

  it("refuses a reference that is not pinned: every lease of a job must name the same image", async () => {
    await expect(jobImageDigest(noStore, "127.0.0.1:5000/baton/train:v1")).rejects.toThrow(
      /image 127.0.0.1:5000\/baton\/train:v1 is not pinned to a digest/,
    );
  });
});

describe("registry endpoints and challenges", () => {
  it("Docker Hub is reached at registry-1.docker.io; loopback registries over http, every other over https", () => {
    expect(registryEndpoint("docker.io")).toBe("https://registry-1.docker.io");
    expect(registryEndpoint("ghcr.io")).toBe("https://ghcr.io");
    expect(registryEndpoint("registry.example.com:5000")).toBe("https://registry.example.com:5000");
    expect(registryEndpoint("127.0.0.1:5000")).toBe("http://127.0.0.1:5000");
    expect(registryEndpoint("localhost:5000")).toBe("http://localhost:5000");
    expect(registryEndpoint("[::1]:5000")).toBe("http://[::1]:5000");
  });

  it("reads a Bearer challenge, quoted or not, and nothing else", () => {
    expect(
      parseBearerChallenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
      ),
    ).toEqual({
      realm: "https://auth.docker.io/token",
      service: "registry.docker.io",
      scope: "repository:library/busybox:pull",
    });
    expect(parseBearerChallenge('bearer realm=https://r.example/token, service="a \\"b\\""')).toEqual({
      realm: "https://r.example/token",
      service: 'a "b"',
    });
    expect(parseBearerChallenge('Basic realm="registry"')).toBeUndefined();
    expect(parseBearerChallenge('Bearer service="x"')).toBeUndefined();
    expect(parseBearerChallenge(null)).toBeUndefined();
  });
});

/** The ImageResolutionError `promise` rejects with (asserted to be one). */
async function failure(promise: Promise<unknown>): Promise<ImageResolutionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ImageResolutionError);
  return error as ImageResolutionError;
}

/** An HTTP server on 127.0.0.1 for a test: its `host:port`, and a close. */
async function listen(handler: http.RequestListener): Promise<{ address: string; close(): Promise<void> }> {
  const server = http.createServer(handler);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}

describe("resolveImageDigest without a registry", () => {
  it("returns a reference with a digest pinned, without asking anyone (nothing listens on port 1)", async () => {
    await expect(resolveImageDigest(`127.0.0.1:1/x:tag@${DIGEST}`)).resolves.toEqual({
      reference: `127.0.0.1:1/x@${DIGEST}`,
      digest: DIGEST,
    });
    await expect(pinJobImage(`busybox@${DIGEST}`)).resolves.toBe(`docker.io/library/busybox@${DIGEST}`);
    await expect(pinJobImage({ cid: "bafy" })).resolves.toEqual({ cid: "bafy" });
  });

  it("a registry that accepts the connection and never answers: a timeout error within the bound", async () => {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => sockets.add(socket));
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as net.AddressInfo;
    try {
      const started = Date.now();
      const error = await failure(resolveImageDigest(`127.0.0.1:${port}/x:tag`, { timeoutMs: 500 }));
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(error.reason).toBe("timeout");
      expect(error.shortMessage).toBe(
        `cannot pin image 127.0.0.1:${port}/x:tag: registry 127.0.0.1:${port} did not answer within 500 ms`,
      );
      expect(sockets.size).toBeGreaterThan(0);

      // The caller's own abort is not a timeout: it ends with the caller's reason.
      const controller = new AbortController();
      const pending = resolveImageDigest(`127.0.0.1:${port}/x:tag`, { signal: controller.signal });
      controller.abort(new Error("user gave up"));
      await expect(pending).rejects.toThrow("user gave up");
    } finally {
      for (const socket of sockets) socket.destroy();
      server.close();
    }
  });

  it("a registry nobody listens at: unreachable, naming the image, the registry and the refusal", async () => {
    const server = net.createServer().listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as net.AddressInfo;
    server.close();
    await once(server, "close");
    const error = await failure(resolveImageDigest(`127.0.0.1:${port}/train`));
    expect(error.reason).toBe("unreachable");
    expect(error.shortMessage).toBe(
      `cannot pin image 127.0.0.1:${port}/train:latest: cannot reach registry 127.0.0.1:${port}`,
    );
    expect(error.details).toContain("ECONNREFUSED");
    expect(error).toBeInstanceOf(UserError);
  });
});

const tools = ["docker-registry", "podman"].filter((tool) => !installed(tool));

describe.skipIf(tools.length > 0)(
  `resolveImageDigest against a real registry (docker-registry and podman${tools.length > 0 ? `; skipped: ${tools.join(" and ")} not installed` : ""})`,
  () => {
    let registry: Registry;
    let podman: ThrowawayPodman;
    /** The digest podman reports for what it pushed as x:one (and x:latest). */
    let pushed: string;

    beforeAll(async () => {
      [registry, podman] = await Promise.all([startRegistry(), throwawayPodman()]);
      const image = `${registry.address}/x:one`;
      await podman.buildBusybox(image);
      const digestFile = path.join(podman.dir, "digest");
      await podman.podman(["push", "--tls-verify=false", "--digestfile", digestFile, image]);
      await podman.podman(["push", "--tls-verify=false", image, `docker://${registry.address}/x:latest`]);
      pushed = (await readFile(digestFile, "utf8")).trim();
    });

    afterAll(async () => {
      // Both, even if one of them (or the set-up) failed.
      await Promise.allSettled([podman?.remove(), registry?.stop()]);
    });

    it("a tag resolves to the digest podman reported when it pushed it", async () => {
      expect(pushed).toMatch(/^sha256:[a-f0-9]{64}$/);
      const resolved = await resolveImageDigest(`${registry.address}/x:one`);
      expect(resolved).toEqual({
        reference: `${registry.address}/x@${pushed}`,
        digest: pushed,
        mediaType: expect.stringMatching(/manifest/),
      });
      expect(MANIFEST_MEDIA_TYPES).toContain(resolved.mediaType);
    });

    it("no tag means latest", async () => {
      await expect(resolveImageDigest(`${registry.address}/x`)).resolves.toMatchObject({ digest: pushed });
    });

    it("an unknown tag: not found, naming the image and the registry, with the registry's own code", async () => {
      const error = await failure(resolveImageDigest(`${registry.address}/x:nope`));
      expect(error.reason).toBe("not-found");
      expect(error.shortMessage).toBe(
        `cannot pin image ${registry.address}/x:nope: registry ${registry.address} has no such image or tag`,
      );
      expect(error.details).toContain("MANIFEST_UNKNOWN");
    });

    it("an unknown repository: not found", async () => {
      const error = await failure(resolveImageDigest(`${registry.address}/nothing/here:one`));
      expect(error.reason).toBe("not-found");
    });

    it("a registry that leaves the digest out of its answers: the SHA-256 of the manifest it sends", async () => {
      const methods: string[] = [];
      const proxy = await proxyTo(registry.address, (headers, method) => {
        methods.push(method);
        delete headers["docker-content-digest"];
      });
      try {
        await expect(resolveImageDigest(`${proxy.address}/x:one`)).resolves.toMatchObject({
          reference: `${proxy.address}/x@${pushed}`,
          digest: pushed,
        });
        expect(methods).toEqual(["HEAD", "GET"]);
      } finally {
        await proxy.close();
      }
    });

    it("a digest that is not sha256: refused", async () => {
      const proxy = await proxyTo(registry.address, (headers) => {
        headers["docker-content-digest"] = `sha512:${"ab".repeat(64)}`;
      });
      try {
        const error = await failure(resolveImageDigest(`${proxy.address}/x:one`));
        expect(error.reason).toBe("bad-response");
        expect(error.shortMessage).toContain("not sha256");
      } finally {
        await proxy.close();
      }
    });

    it("a manifest whose bytes do not hash to the digest the registry claims: refused", async () => {
      const proxy = await proxyTo(registry.address, (headers, method) => {
        if (method === "HEAD") delete headers["docker-content-digest"];
        else headers["docker-content-digest"] = DIGEST;
      });
      try {
        const error = await failure(resolveImageDigest(`${proxy.address}/x:one`));
        expect(error.reason).toBe("bad-response");
        expect(error.details).toContain(pushed);
      } finally {
        await proxy.close();
      }
    });

    describe.skipIf(!installed("openssl"))("with token auth (the flow Docker Hub uses; needs openssl)", () => {
      let tokens: TokenServer;
      let secured: Registry;

      beforeAll(async () => {
        tokens = await startTokenServer(podman.dir);
        // A second registry over the first one's storage, which lets nobody in without a token.
        secured = await startRegistry({
          storage: path.join(registry.dir, "data"),
          auth: [
            "  token:",
            `    realm: http://${tokens.address}/token`,
            "    service: baton-test-registry",
            "    issuer: baton-test-issuer",
            `    rootcertbundle: ${tokens.certFile}`,
          ].join("\n"),
        });
      });

      afterAll(async () => {
        await Promise.allSettled([secured?.stop(), tokens?.close()]);
      });

      it("gets an anonymous pull token for the repository from the realm the 401 names, then resolves", async () => {
        tokens.requests.length = 0;
        const unauthenticated = await fetch(`http://${secured.address}/v2/x/manifests/one`, { method: "HEAD" });
        expect(unauthenticated.status).toBe(401);

        await expect(resolveImageDigest(`${secured.address}/x:one`)).resolves.toMatchObject({ digest: pushed });
        expect(tokens.requests).toEqual([{ service: "baton-test-registry", scope: "repository:x:pull" }]);
      });

      it("a token that grants nothing: unauthorized, and no second token asked for", async () => {
        tokens.requests.length = 0;
        tokens.grant = false;
        try {
          const error = await failure(resolveImageDigest(`${secured.address}/x:one`));
          expect(error.reason).toBe("unauthorized");
          expect(error.shortMessage).toBe(
            `cannot pin image ${secured.address}/x:one: registry ${secured.address} refused anonymous access (the image is private or does not exist)`,
          );
          expect(tokens.requests).toHaveLength(1);
        } finally {
          tokens.grant = true;
        }
      });
    });
  },
);

/**
 * A pass-through proxy to a real registry that lets a test change the headers of its answers
 * (a registry that leaves the digest out, or sends a bad one): the bytes are the registry's.
 */
function proxyTo(
  upstream: string,
  edit: (headers: Record<string, string>, method: string) => void,
): ReturnType<typeof listen> {
  return listen((request, response) => {
    void (async () => {
      const answer = await fetch(`http://${upstream}${request.url}`, {
        method: request.method!,
        headers: Object.fromEntries(
          Object.entries(request.headers).filter((e): e is [string, string] => typeof e[1] === "string"),
        ),
      });
      const headers = Object.fromEntries(answer.headers);
      // fetch decoded the body; the proxy sends it as it is now.
      delete headers["content-encoding"];
      edit(headers, request.method!);
      response.writeHead(answer.status, headers);
      response.end(Buffer.from(await answer.arrayBuffer()));
    })().catch((error: unknown) => response.destroy(error as Error));
  });
}

interface TokenServer {
  address: string;
  certFile: string;
  /** What each token request asked for. */
  requests: { service: string | null; scope: string | null }[];
  /** Whether tokens grant what they are asked for (else they grant nothing). */
  grant: boolean;
  close(): Promise<void>;
}

/**
 * A token service for docker-registry's token auth: ES256 JWTs with the signing certificate in
 * their `x5c` header, which the registry checks against the certificate bundle it is given.
 */
async function startTokenServer(dir: string): Promise<TokenServer> {
  const keyFile = path.join(dir, "token-key.pem");
  const certFile = path.join(dir, "token-cert.pem");
  await promisify(execFile)("openssl", [
    ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
    ...["-keyout", keyFile, "-out", certFile, "-days", "1", "-subj", "/CN=baton-test-token"],
  ]);
  const key: KeyObject = createPrivateKey(await readFile(keyFile));
  const certificate = (await readFile(certFile, "utf8")).replace(/-----[A-Z ]+-----|\s/g, "");
  const base64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
  const state = { requests: [] as TokenServer["requests"], grant: true };
  const server = await listen((request, response) => {
    const url = new URL(request.url!, "http://token");
    const service = url.searchParams.get("service");
    const scope = url.searchParams.get("scope");
    state.requests.push({ service, scope });
    const [type, name, actions] = (scope ?? "").split(":");
    const now = Math.floor(Date.now() / 1000);
    const header = base64url({ typ: "JWT", alg: "ES256", x5c: [certificate] });
    const claims = base64url({
      iss: "baton-test-issuer",
      sub: "",
      aud: service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access: state.grant && name ? [{ type, name, actions: actions?.split(",") ?? [] }] : [],
    });
    const signature = sign("sha256", Buffer.from(`${header}.${claims}`), { key, dsaEncoding: "ieee-p1363" });
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ token: `${header}.${claims}.${signature.toString("base64url")}` }));
  });
  return Object.assign(state, { address: server.address, certFile, close: server.close });
}
