//! Connections to a syslog server: UDP, TCP, TLS (RFC 5425) and Unix
//! datagram sockets, with RFC 6587 framing on streams, and RELP sessions
//! (over TCP or TLS) whose messages the server acknowledges.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "tls")]
use std::sync::Arc;

use super::relp;

/// How messages are delimited on a stream (RFC 6587).
///
/// ```
/// use tracing_audit::{syslog::Framing, SyslogSink};
/// let sink = SyslogSink::tcp("127.0.0.1:601").framing(Framing::Lf);
/// # let _ = sink;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Framing {
    /// `LEN SP MSG` (default; the only framing RFC 5425 allows on TLS).
    #[default]
    OctetCounting,
    /// `MSG LF` (non-transparent framing).
    Lf,
}

/// Where to send.
#[derive(Clone)]
pub(crate) enum Target {
    Udp(String),
    Tcp(String),
    #[cfg(feature = "tls")]
    Tls(
        String,
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    Unix(PathBuf),
    /// RELP over TCP, with the window of unanswered messages.
    Relp(String, usize),
    /// RELP over TLS.
    #[cfg(feature = "tls")]
    RelpTls(
        String,
        usize,
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Udp(a) => write!(f, "udp://{a}"),
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            #[cfg(feature = "tls")]
            Target::Tls(a, _, _) => write!(f, "tls://{a}"),
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Relp(a, _) => write!(f, "relp://{a}"),
            #[cfg(feature = "tls")]
            Target::RelpTls(a, ..) => write!(f, "relp+tls://{a}"),
        }
    }
}

impl Target {
    pub(crate) fn is_datagram(&self) -> bool {
        matches!(self, Target::Udp(_) | Target::Unix(_))
    }

    /// Whether the server acknowledges each message (RELP).
    pub(crate) fn is_acknowledged(&self) -> bool {
        match self {
            Target::Relp(..) => true,
            #[cfg(feature = "tls")]
            Target::RelpTls(..) => true,
            _ => false,
        }
    }
}

/// An open connection.
pub(crate) enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Unix(UnixDatagram),
    /// A RELP session, and its socket (for timeouts and closing).
    Relp(Box<relp::Session>, TcpStream),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Udp(_) => "Conn::Udp",
            Conn::Tcp(_) => "Conn::Tcp",
            #[cfg(feature = "tls")]
            Conn::Tls(_) => "Conn::Tls",
            Conn::Unix(_) => "Conn::Unix",
            Conn::Relp(..) => "Conn::Relp",
        })
    }
}

// Every blocking call of a sink is bounded, so a peer that stops mid-protocol
// (accepts and never answers a TLS handshake, stops reading) turns into an
// error, a reconnect with backoff, and at shutdown a count of what was not
// sent, never a thread stuck past the shutdown grace.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        )
    })
}

fn tcp(addr: &str, limit: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&resolve(addr)?, CONNECT_TIMEOUT.min(limit))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT.min(limit)))?;
    // Reads happen only in the TLS handshake and close.
    s.set_read_timeout(Some(READ_TIMEOUT.min(limit)))?;
    Ok(s)
}

impl Conn {
    /// Connects; no call takes longer than `limit` (the time left before a
    /// shutdown deadline, or the usual timeouts).
    pub(crate) fn open(target: &Target, limit: Duration) -> io::Result<Conn> {
        let limit = limit.max(Duration::from_millis(1));
        Ok(match target {
            Target::Udp(addr) => {
                let to = resolve(addr)?;
                let bind: SocketAddr = if to.is_ipv6() {
                    "[::]:0".parse()
                } else {
                    "0.0.0.0:0".parse()
                }
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let s = UdpSocket::bind(bind)?;
                s.connect(to)?;
                Conn::Udp(s)
            }
            Target::Tcp(addr) => Conn::Tcp(tcp(addr, limit)?),
            #[cfg(feature = "tls")]
            Target::Tls(addr, config, name) => {
                Conn::Tls(Box::new(tls(tcp(addr, limit)?, config, name)?))
            }
            Target::Relp(addr, window) => {
                let sock = tcp(addr, limit)?;
                let session = relp::Session::open(Box::new(sock.try_clone()?), *window)?;
                Conn::Relp(Box::new(session), sock)
            }
            #[cfg(feature = "tls")]
            Target::RelpTls(addr, window, config, name) => {
                let sock = tcp(addr, limit)?;
                let stream = tls(sock.try_clone()?, config, name)?;
                let session = relp::Session::open(Box::new(stream), *window)?;
                Conn::Relp(Box::new(session), sock)
            }
            Target::Unix(path) => {
                let s = UnixDatagram::unbound()?;
                s.set_write_timeout(Some(WRITE_TIMEOUT.min(limit)))?;
                s.connect(path)?;
                Conn::Unix(s)
            }
        })
    }

    /// A way to shut this connection's socket down from another thread
    /// (ending a call blocked in it); `None` for UDP, which never blocks.
    pub(crate) fn aborter(&self) -> Option<crate::sink::forward::Abort> {
        use std::net::Shutdown;
        /// A clone of the socket, shut down by `shut` when called.
        fn on<T: Send + 'static>(
            clone: std::io::Result<T>,
            shut: fn(&T) -> std::io::Result<()>,
        ) -> Option<crate::sink::forward::Abort> {
            let c = clone.ok()?;
            Some(Box::new(move || {
                let _ = shut(&c);
            }))
        }
        let tcp = |s: &TcpStream| on(s.try_clone(), |c| c.shutdown(Shutdown::Both));
        match self {
            Conn::Udp(_) => None,
            Conn::Tcp(s) => tcp(s),
            #[cfg(feature = "tls")]
            Conn::Tls(s) => tcp(&s.sock),
            Conn::Relp(_, s) => tcp(s),
            Conn::Unix(s) => on(s.try_clone(), |c| c.shutdown(Shutdown::Both)),
        }
    }

    /// Shortens the socket's write and read timeouts to `left` (at least
    /// 1 ms), so no call outlives a shutdown deadline.
    pub(crate) fn bound_timeouts(&self, left: Duration) {
        let t = Some(left.clamp(Duration::from_millis(1), WRITE_TIMEOUT));
        match self {
            Conn::Tcp(s) => {
                let _ = s.set_write_timeout(t);
                let _ = s.set_read_timeout(t);
            }
            #[cfg(feature = "tls")]
            Conn::Tls(s) => {
                let _ = s.sock.set_write_timeout(t);
                let _ = s.sock.set_read_timeout(t);
            }
            Conn::Unix(s) => {
                let _ = s.set_write_timeout(t);
            }
            Conn::Relp(_, s) => {
                let _ = s.set_write_timeout(t);
                let _ = s.set_read_timeout(t);
            }
            Conn::Udp(_) => {}
        }
    }

    /// Whether a stream's peer has closed it (checked before sending, so a
    /// relay restart is noticed before messages go into a dead socket).
    pub(crate) fn peer_closed(&self) -> bool {
        let sock = match self {
            Conn::Tcp(s) => s,
            #[cfg(feature = "tls")]
            Conn::Tls(s) => &s.sock,
            Conn::Relp(_, s) => s,
            _ => return false,
        };
        if sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut b = [0u8; 1];
        let closed = match sock.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        let _ = sock.set_nonblocking(false);
        closed
    }

    /// Sends one message with the framing the transport needs. Returns how
    /// many messages are now delivered as far as the transport can tell:
    /// this one once written, or for RELP those the server acknowledged.
    pub(crate) fn send(
        &mut self,
        msg: &[u8],
        framing: Framing,
        scratch: &mut Vec<u8>,
    ) -> io::Result<u64> {
        match self {
            Conn::Udp(s) => s.send(msg).map(|_| 1),
            Conn::Unix(s) => s.send(msg).map(|_| 1),
            Conn::Tcp(s) => s.write_all(framed(msg, framing, scratch)).map(|()| 1),
            #[cfg(feature = "tls")]
            Conn::Tls(s) => {
                s.write_all(framed(msg, Framing::OctetCounting, scratch))?;
                s.flush().map(|()| 1)
            }
            Conn::Relp(s, _) => s.send(msg),
        }
    }

    /// Waits until the server has acknowledged everything sent (RELP; the
    /// other transports have nothing to wait for). Returns how many
    /// messages were acknowledged meanwhile.
    pub(crate) fn settle(&mut self) -> io::Result<u64> {
        match self {
            Conn::Relp(s, _) => s.settle(),
            _ => Ok(0),
        }
    }

    /// Messages the server acknowledged that a failed [`Conn::send`] or
    /// [`Conn::settle`] could not return (RELP; 0 for the others): take
    /// them before [`Conn::abandon`], whose messages they are not.
    pub(crate) fn acknowledged(&mut self) -> u64 {
        match self {
            Conn::Relp(s, _) => s.acknowledged(),
            _ => 0,
        }
    }

    /// Drops a connection found broken; returns the messages sent on it
    /// that the server did not acknowledge (RELP), oldest first.
    pub(crate) fn abandon(self) -> Vec<Vec<u8>> {
        match self {
            Conn::Relp(s, sock) => {
                let _ = sock.shutdown(std::net::Shutdown::Both);
                s.into_unacked()
            }
            other => {
                other.close();
                Vec::new()
            }
        }
    }

    /// Closes politely (TLS `close_notify`, RELP `close`).
    pub(crate) fn close(self) {
        match self {
            Conn::Relp(s, sock) => {
                if s.unanswered() == 0 {
                    let _ = s.close();
                }
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
            #[cfg(feature = "tls")]
            Conn::Tls(mut s) => {
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
                let _ = s.sock.shutdown(std::net::Shutdown::Both);
            }
            Conn::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            _ => {}
        }
    }
}

/// A TLS client stream on a connected socket, its handshake complete (so
/// certificate errors surface at connect).
#[cfg(feature = "tls")]
fn tls(
    sock: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    name: &rustls::pki_types::ServerName<'static>,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let conn = rustls::ClientConnection::new(config.clone(), name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

fn framed<'a>(msg: &[u8], framing: Framing, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    scratch.clear();
    match framing {
        Framing::OctetCounting => {
            crate::record::encode::write_u64(scratch, msg.len() as u64);
            scratch.push(b' ');
            scratch.extend_from_slice(msg);
        }
        Framing::Lf => {
            scratch.extend_from_slice(msg);
            scratch.push(b'\n');
        }
    }
    scratch
}
