import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";

/**
 * Makes a throw-away self-signed certificate for 127.0.0.1 (EC P-256, valid for a day) and its key
 * in `dir`, with openssl: TLS on loopback for the tests and benches (the gateway's HTTPS, the inner
 * nginx hop of `bench:serve`).
 */
export async function selfSignedCertificate(dir: string): Promise<{ certFile: string; keyFile: string }> {
  const certFile = path.join(dir, "cert.pem");
  const keyFile = path.join(dir, "key.pem");
  await promisify(execFile)("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
    "-keyout",
    keyFile,
    "-out",
    certFile,
  ]);
  return { certFile, keyFile };
}
