//! TCP plumbing shared by both directions: the original destination of a redirected
//! connection, dialing out, and splicing two streams together with half-close.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use crate::{
    metrics::{istio::TcpCells, TcpRecord},
    prefixed::PrefixedIo,
};

/// Where the app meant to connect before iptables redirected it to us (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` for IPv6).
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(tcp);
    let original = match tcp.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    // Only address and port: IPv6 flow labels and scope ids would defeat snapshot lookups.
    original
        .as_socket()
        .map(|addr| SocketAddr::new(addr.ip(), addr.port()))
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// How long a TCP connect may take (Istio's default `connectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `dst` directly. The proxy runs as the excluded uid, so this is not captured again.
pub async fn connect(dst: SocketAddr) -> io::Result<TcpStream> {
    let tcp = within_connect_timeout(TcpStream::connect(dst)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// `connect` within Istio's default `connectTimeout`.
pub async fn within_connect_timeout(
    connect: impl std::future::Future<Output = io::Result<TcpStream>>,
) -> io::Result<TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// [`splice`], recorded as one of Istio's TCP connections (opened, closed, bytes each way):
/// the bytes are counted as they pass, so a long-lived connection's byte counters grow while
/// it is open (as Istio reports them every `reportingInterval`), and one that ends in an error
/// (a reset) is still recorded with what it carried.
pub async fn splice_recorded<A, B>(
    mut record: TcpRecord,
    caller: PrefixedIo<A>,
    callee: B,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut callee = Counted {
        io: callee,
        read: 0,
        written: 0,
        cells: record.cells(),
    };
    let spliced = splice(caller, &mut callee).await;
    // What reached the callee came from the caller, and the other way round.
    record.bytes(callee.written, callee.read);
    spliced.map(|_| ())
}

/// A stream that counts the bytes read from and written to it, and adds them to its
/// connection's counters as they pass (read from the callee: sent to the caller).
struct Counted<IO> {
    io: IO,
    read: u64,
    written: u64,
    cells: Option<Arc<TcpCells>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.read += n;
            if let Some(cells) = &this.cells {
                cells.sent.fetch_add(n, Relaxed);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
            if let Some(cells) = &this.cells {
                cells.received.fetch_add(n as u64, Relaxed);
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Byte counts of a finished splice, from the point of view of the caller's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spliced {
    pub received: u64,
    pub sent: u64,
}

/// Copies both ways until both sides are done. When one side finishes sending, the other side's
/// write half is shut down and the opposite direction keeps flowing (TCP half-close).
pub async fn splice<A, B>(caller: PrefixedIo<A>, mut callee: B) -> io::Result<Spliced>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (prefix, mut caller) = caller.into_parts();
    callee.write_all(&prefix).await?;
    let (received, sent) = tokio::io::copy_bidirectional(&mut caller, &mut callee).await?;
    Ok(Spliced {
        received: received + prefix.len() as u64,
        sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn splice_replays_prefix_and_half_closes() {
        let (mut app, caller) = tokio::io::duplex(64);
        let (callee, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(splice(PrefixedIo::new(&b"he"[..], caller), callee));
        app.write_all(b"llo").await.expect("write");
        app.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, b"hello");
        // The caller's half-close did not stop the other direction.
        server.write_all(b"bye").await.expect("write back");
        drop(server);
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back, b"bye");
        let spliced = task.await.expect("join").expect("splice");
        assert_eq!(
            spliced,
            Spliced {
                received: 5,
                sent: 3
            }
        );
    }
}
