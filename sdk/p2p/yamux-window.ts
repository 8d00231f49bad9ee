import { StreamState, YamuxStream } from "@libp2p/yamux/stream";

/** The receive-window fields of a yamux stream that `sendWindowUpdate` weighs (private in its types). */
interface Window {
  state: StreamState;
  recvWindow: number;
  recvWindowCapacity: number;
}

let applied = false;

/**
 * Makes yamux streams send a window update only once half of their receive window is used, as
 * hashicorp/yamux and go-yamux do, instead of after every data frame as @libp2p/yamux 8 does. On a
 * stream that carries small request/response exchanges, that update is a second encrypted frame
 * and socket write for every message, each way: half of the transport's work for an HTTP request.
 * The window still grows, and a sender still gets its update with half the window in hand, so a
 * large body never waits for one. Updates that carry a flag (the ACK of a new stream) go at once.
 * Applies to every yamux stream in the process; called by {@link createBatonHost}.
 */
export function sendWindowUpdatesAtHalf(): void {
  if (applied) return;
  applied = true;
  const send = YamuxStream.prototype.sendWindowUpdate;
  YamuxStream.prototype.sendWindowUpdate = function (this: YamuxStream) {
    const window = this as unknown as Window;
    if (window.state === StreamState.Established && window.recvWindowCapacity > window.recvWindow / 2) return;
    send.call(this);
  };
}
