//! A client connection's transport as hyper sees it, made so that an idle
//! HTTP/1.1 connection can be taken back from hyper and held with no buffer of
//! hyper's until its client speaks again (nginx frees its buffers between
//! keep-alive requests the same way). hyper keeps an 8 KiB read buffer and an
//! 8 KiB write buffer for each connection for as long as it serves it, which
//! at 10k idle clients is 160 MiB doing nothing. Over TLS, rustls keeps its
//! session (and a small read buffer of its own) while parked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Plain TCP, or TLS (boxed: a TLS session is large, and a plain connection's
/// task is not made its size).
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What the client's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// Anything but the HTTP/2 preface: HTTP/1.x, or garbage hyper will refuse.
    Http1,
    /// The HTTP/2 preface, or too few bytes yet to tell: hyper-util's auto
    /// server reads on and decides.
    Either,
}

/// Shared between a connection's task and its transport, which hyper owns
/// while it serves the connection.
#[derive(Debug, Default)]
pub(crate) struct IoState {
    /// Set while the task takes the connection back from hyper: hyper's
    /// "shutdown" of the socket is then not passed on, the socket stays open.
    pub(crate) parking: AtomicBool,
    /// Whether bytes written are not all taken by the socket yet: a write or
    /// a flush returned `Pending` (over TLS, rustls takes a write whole and
    /// only a flush reaches the socket) and no flush has completed since.
    pub(crate) write_pending: AtomicBool,
}

/// A connection's transport: the bytes read ahead by an earlier hyper
/// connection on it come first.
pub(crate) struct ClientIo {
    transport: Transport,
    /// Read from the socket but not yet parsed when hyper let go of it.
    read_ahead: Bytes,
    state: Arc<IoState>,
}

impl ClientIo {
    pub(crate) fn new(transport: Transport, state: Arc<IoState>) -> Self {
        Self { transport, read_ahead: Bytes::new(), state }
    }

    pub(crate) fn is_plain(&self) -> bool {
        matches!(self.transport, Transport::Plain(_))
    }

    /// Whether the connection speaks HTTP/1.1 and can be parked between
    /// requests: plain (where its first bytes tell), or TLS whose client named
    /// `http/1.1` by ALPN. A TLS client that named no protocol may still speak
    /// HTTP/2 (hyper-util's auto server tells), and is hyper's for its life.
    pub(crate) fn parkable(&self) -> bool {
        match &self.transport {
            Transport::Plain(_) => true,
            Transport::Tls(stream) => stream.get_ref().1.alpn_protocol() == Some(b"http/1.1"),
        }
    }

    /// Puts back what hyper had read and not parsed (the start of a request
    /// head), copied: hyper's buffer is a view of its whole 8 KiB allocation.
    pub(crate) fn unread(&mut self, read_buf: &[u8]) {
        self.read_ahead = Bytes::copy_from_slice(read_buf);
    }

    /// Waits, holding no buffer, until the client has sent something (or
    /// closed: `Ok(None)`, told `first` only), and says what its first bytes
    /// look like. The `first` bytes of a connection are peeked at to tell
    /// HTTP/1.1 from HTTP/2 (one system call); later ones are only waited for,
    /// and hyper reads them. A whole head read ahead needs no wait; a part of
    /// one waits for more. (A poll function, not an `async fn`: a future
    /// would be kept in every parked connection's task.)
    pub(crate) fn poll_client(&self, cx: &mut Context<'_>, first: bool) -> Poll<io::Result<Option<Speaks>>> {
        if self.read_ahead.windows(4).any(|w| w == b"\r\n\r\n") {
            return Poll::Ready(Ok(Some(Speaks::Http1)));
        }
        let stream = match &self.transport {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => {
                // HTTP/1.1 by ALPN (`parkable`). rustls may hold what the
                // socket no longer shows: decrypted bytes not read yet, or
                // the client's close_notify. Then hyper reads at once; else
                // the socket says when the client speaks.
                let (tcp, session) = stream.get_ref();
                if !session.wants_read() {
                    return Poll::Ready(Ok(Some(Speaks::Http1)));
                }
                return tcp.poll_read_ready(cx).map_ok(|()| Some(Speaks::Http1));
            }
        };
        if !first {
            return stream.poll_read_ready(cx).map_ok(|()| Some(Speaks::Http1));
        }
        let mut first = [0u8; H2_PREFACE.len()];
        let mut buf = ReadBuf::new(&mut first);
        let n = std::task::ready!(stream.poll_peek(cx, &mut buf))?;
        Poll::Ready(Ok(match buf.filled() {
            [] => None,
            _ if !self.read_ahead.is_empty() => Some(Speaks::Http1),
            seen if *seen == H2_PREFACE[..n] => Some(Speaks::Either),
            _ => Some(Speaks::Http1),
        }))
    }

    #[cfg(test)]
    async fn wait_for_client(&self, first: bool) -> io::Result<Option<Speaks>> {
        std::future::poll_fn(|cx| self.poll_client(cx, first)).await
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl ClientIo {
    /// Notes a write that left bytes waiting in hyper's buffer.
    fn written(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if polled.is_pending() {
            self.state.write_pending.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        };
        this.written(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.written(polled)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    /// hyper flushes once its own buffer is written out.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        };
        match polled {
            Poll::Ready(Ok(())) => this.state.write_pending.store(false, Ordering::Relaxed),
            Poll::Pending => this.state.write_pending.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_first_bytes_tell_http1_from_the_http2_preface_without_being_consumed() {
        for (sent, speaks) in [
            (&b"GET / HTTP/1.1\r\n"[..], Speaks::Http1),
            (b"POST / HTTP/1.1\r\n", Speaks::Http1),
            (H2_PREFACE, Speaks::Either),
            // "P" could be either: hyper-util's auto server reads on.
            (b"P", Speaks::Either),
        ] {
            let (mut client, server) = pair().await;
            client.write_all(sent).await.unwrap();
            let mut io = ClientIo::new(Transport::Plain(server), Arc::default());
            assert_eq!(io.wait_for_client(true).await.unwrap(), Some(speaks), "{sent:?}");
            let mut read = vec![0; sent.len()];
            io.read_exact(&mut read).await.unwrap();
            assert_eq!(read, sent, "the bytes are still there to be read");
        }
        let (client, server) = pair().await;
        drop(client);
        let io = ClientIo::new(Transport::Plain(server), Arc::default());
        assert_eq!(io.wait_for_client(true).await.unwrap(), None, "a closed client");
    }

    #[tokio::test]
    async fn bytes_read_ahead_come_first_and_a_parked_shutdown_leaves_the_socket_open() {
        let (mut client, server) = pair().await;
        let state = Arc::new(IoState::default());
        let mut io = ClientIo::new(Transport::Plain(server), state.clone());
        io.unread(b"GET /a");
        let waiting = tokio::time::timeout(Duration::from_millis(100), io.wait_for_client(true)).await;
        assert!(waiting.is_err(), "half a head waits for the rest: {waiting:?}");
        client.write_all(b" HTTP/1.1\r\n").await.unwrap();
        assert_eq!(io.wait_for_client(true).await.unwrap(), Some(Speaks::Http1));
        let mut read = vec![0; 17];
        io.read_exact(&mut read).await.unwrap();
        assert_eq!(read, b"GET /a HTTP/1.1\r\n");
        io.unread(b"GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(io.wait_for_client(true).await.unwrap(), Some(Speaks::Http1), "a whole head needs no wait");
        let mut read = vec![0; 19];
        io.read_exact(&mut read).await.unwrap();

        state.parking.store(true, Ordering::Relaxed);
        io.shutdown().await.unwrap();
        state.parking.store(false, Ordering::Relaxed);
        io.write_all(b"still open").await.unwrap();
        let mut seen = vec![0; 10];
        client.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, b"still open");
        io.shutdown().await.unwrap();
        assert_eq!(client.read(&mut seen).await.unwrap(), 0, "a real shutdown reaches the client");
    }

    /// A TLS connection over loopback whose client named `alpn`: the server's
    /// side as a `ClientIo`, and the client's stream.
    async fn tls_pair(alpn: &[u8], state: Arc<IoState>) -> (ClientIo, tokio_rustls::client::TlsStream<TcpStream>) {
        use rustls::pki_types::{PrivateKeyDer, ServerName};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let (tcp_client, tcp_server) = pair().await;
        let (client, server) = tokio::join!(
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("localhost").unwrap(), tcp_client),
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(tcp_server),
        );
        (ClientIo::new(Transport::Tls(Box::new(server.unwrap())), state), client.unwrap())
    }

    #[tokio::test]
    async fn tls_parks_only_with_http1_by_alpn_and_sees_bytes_rustls_holds() {
        let (io, _client) = tls_pair(b"h2", Arc::default()).await;
        assert!(!io.parkable(), "HTTP/2 by ALPN stays with hyper");

        let (mut io, mut client) = tls_pair(b"http/1.1", Arc::default()).await;
        assert!(io.parkable());
        let waiting = tokio::time::timeout(Duration::from_millis(100), io.wait_for_client(false)).await;
        assert!(waiting.is_err(), "a silent client is waited for: {waiting:?}");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(io.wait_for_client(false).await.unwrap(), Some(Speaks::Http1));
        // Three bytes read: the rest of the record is decrypted and held by
        // rustls, and the socket has nothing more to say. Still no wait.
        let mut three = [0u8; 3];
        io.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"GET");
        let ready = tokio::time::timeout(Duration::from_millis(100), io.wait_for_client(false)).await;
        assert_eq!(ready.expect("bytes held by rustls need no wait").unwrap(), Some(Speaks::Http1));
        let mut rest = vec![0; 13];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, b" / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_tls_flush_the_socket_cannot_take_yet_marks_bytes_not_written() {
        let state = Arc::new(IoState::default());
        let (mut io, mut client) = tls_pair(b"http/1.1", state.clone()).await;
        // The client reads nothing: write until the socket is full.
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while let Ok(n) = tokio::time::timeout(Duration::from_millis(50), io.write(&chunk)).await {
            written += n.unwrap();
            assert!(written < 256 << 20, "the socket never filled");
        }
        // rustls took a write whole; only a flush reaches the socket.
        state.write_pending.store(false, Ordering::Relaxed);
        let flushed = tokio::time::timeout(Duration::from_millis(50), io.flush()).await;
        assert!(flushed.is_err(), "the flush waits for the client");
        assert!(state.write_pending.load(Ordering::Relaxed), "bytes held by rustls are not written yet");
        let drain = tokio::spawn(async move {
            let mut sink = vec![0; 64 * 1024];
            while client.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        io.flush().await.unwrap();
        assert!(!state.write_pending.load(Ordering::Relaxed), "all written once the flush completes");
        drop(io);
        drain.await.unwrap();
    }
}
