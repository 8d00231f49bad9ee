/**
 * Where a WebSocket server's frames end, read from its bytes as they pass (RFC 6455 §5.2). A
 * gateway whose replica is lost mid-connection may end the client's connection with a close frame
 * of its own only between two of the server's frames: anywhere else the client would read it as
 * the rest of a frame.
 */
export interface FrameBoundaries {
  /** Reads the next bytes the server sent. */
  feed(chunk: Uint8Array): void;
  /** True when the bytes so far end exactly where a frame ends. */
  readonly atBoundary: boolean;
}

export function frameBoundaries(): FrameBoundaries {
  let header: number[] = [];
  /** Payload bytes of the current frame still to come. */
  let left = 0;
  return {
    feed(chunk) {
      let i = 0;
      while (i < chunk.byteLength) {
        if (left > 0) {
          const take = Math.min(left, chunk.byteLength - i);
          left -= take;
          i += take;
          continue;
        }
        header.push(chunk[i++]!);
        if (header.length >= 2 && header.length === headerLength(header)) {
          left = payloadLength(header);
          header = [];
        }
      }
    },
    get atBoundary() {
      return left === 0 && header.length === 0;
    },
  };
}

/** A frame header's length, from its first two bytes: the extended length and the mask key follow them. */
function headerLength(header: number[]): number {
  const length7 = header[1]! & 0x7f;
  const extended = length7 === 126 ? 2 : length7 === 127 ? 8 : 0;
  return 2 + extended + (header[1]! & 0x80 ? 4 : 0);
}

function payloadLength(header: number[]): number {
  const length7 = header[1]! & 0x7f;
  if (length7 < 126) return length7;
  const bytes = header.slice(2, length7 === 126 ? 4 : 10);
  return bytes.reduce((sum, byte) => sum * 256 + byte, 0);
}

/** Code 1012, "service restart": the server is going away and the client may connect again (RFC 6455 §7.4, IANA registry). */
export const SERVICE_RESTART = 1012;

/** A close frame as a server sends it (unmasked), with a code and a reason of at most 123 bytes. */
export function closeFrame(code: number, reason: string): Uint8Array {
  const text = new TextEncoder().encode(reason).subarray(0, 123);
  return Uint8Array.from([0x88, 2 + text.byteLength, code >> 8, code & 0xff, ...text]);
}
