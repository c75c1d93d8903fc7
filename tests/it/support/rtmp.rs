//! A hand-rolled RTMP client for hostile tests: the simple handshake and raw chunks, so a
//! test can send exactly the bytes an attacker would (which no real encoder does).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connects from `source` (an address on the loopback range, e.g. 127.0.0.2, so a flood
/// from "another host" does not count against 127.0.0.1's per-address limit).
pub fn connect_from(source: &str, server: &str) -> std::io::Result<TcpStream> {
    let server: SocketAddr = server.parse().unwrap();
    let socket = bound_socket(source)?;
    socket.connect_timeout(&server.into(), Duration::from_secs(2))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn bound_socket(source: &str) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into())?;
    Ok(socket)
}

/// C0+C1, reads S0+S1+S2, sends C2. `Err` when the server closes the connection first.
pub fn handshake(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut c0c1 = vec![3u8];
    c0c1.extend((0..1536u32).map(|i| if i < 8 { 0 } else { (i * 31 + 7) as u8 }));
    stream.write_all(&c0c1)?;
    let mut s = vec![0u8; 1 + 1536 * 2];
    stream.read_exact(&mut s)?;
    stream.write_all(&s[1..1537])?;
    Ok(())
}

/// One message as chunks of 128 bytes on chunk stream `csid`.
pub fn chunks(csid: u8, type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![csid, 0, 0, 0, (len >> 16) as u8, (len >> 8) as u8, len as u8, type_id];
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, piece) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xC0 | csid);
        }
        out.extend_from_slice(piece);
    }
    out
}

pub fn amf_string(s: &str) -> Vec<u8> {
    let mut v = vec![0x02];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn amf_number(n: f64) -> Vec<u8> {
    let mut v = vec![0x00];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

/// `connect` with the command object `{ app: APP }` inside `depth - 1` one-element strict
/// arrays (1 = flat; 10,000 is about 50 KB).
pub fn connect_command(app: &str, depth: usize) -> Vec<u8> {
    let mut v = amf_string("connect");
    v.extend(amf_number(1.0));
    for _ in 1..depth {
        v.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
    }
    v.push(0x03);
    v.extend_from_slice(&3u16.to_be_bytes());
    v.extend_from_slice(b"app");
    v.extend(amf_string(app));
    v.extend_from_slice(&[0x00, 0x00, 0x09]);
    chunks(3, 20, 0, &v)
}

/// Reads until the server closes the connection or `within` passes; true when closed.
pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
    false
}
