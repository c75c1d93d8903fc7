//! FLV tags from files ffmpeg makes, published over RTMP by a scripted publisher (rml_rtmp's
//! client session on a blocking socket): for tests that need what no encoder sends on
//! purpose, such as a codec change mid-stream or timestamps that restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType};
use rml_rtmp::time::RtmpTimestamp;

/// One FLV tag: 8 audio, 9 video (18, script data, is dropped when reading).
#[derive(Debug, Clone)]
pub struct Tag {
    pub kind: u8,
    pub ts: u32,
    pub data: Bytes,
}

/// Encodes `seconds` of test pattern at `size` (x264, a keyframe a second, AAC) with ffmpeg
/// into FLV and returns its audio and video tags.
pub fn make(size: &str, seconds: u32) -> Vec<Tag> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.flv");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", &format!("testsrc2=size={size}:rate=30")])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p", "-b:v", "1000k"])
        .args(["-c:a", "aac", "-b:a", "96k", "-f", "flv"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg made the FLV clip");
    parse(&std::fs::read(&path).unwrap())
}

fn parse(file: &[u8]) -> Vec<Tag> {
    assert_eq!(&file[..3], b"FLV");
    let mut at = u32::from_be_bytes(file[5..9].try_into().unwrap()) as usize + 4;
    let mut tags = Vec::new();
    while at + 11 <= file.len() {
        let kind = file[at];
        let size = u32::from_be_bytes([0, file[at + 1], file[at + 2], file[at + 3]]) as usize;
        let ts = u32::from_be_bytes([file[at + 7], file[at + 4], file[at + 5], file[at + 6]]);
        let data = Bytes::copy_from_slice(&file[at + 11..at + 11 + size]);
        if kind == 8 || kind == 9 {
            tags.push(Tag { kind, ts, data });
        }
        at += 11 + size + 4;
    }
    tags
}

/// A scripted RTMP publisher.
pub struct ScriptedPublisher {
    socket: TcpStream,
    session: ClientSession,
}

impl ScriptedPublisher {
    /// Connects to `rtmp` (host:port), and publishes `key` on `app`.
    pub fn connect(rtmp: &str, app: &str, key: &str) -> Self {
        let mut socket = TcpStream::connect(rtmp).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.set_nodelay(true).unwrap();
        let mut handshake = Handshake::new(PeerType::Client);
        socket.write_all(&handshake.generate_outbound_p0_and_p1().unwrap()).unwrap();
        let mut buf = vec![0u8; 8192];
        let pending = loop {
            let n = socket.read(&mut buf).unwrap();
            assert!(n > 0, "server closed during the handshake");
            match handshake.process_bytes(&buf[..n]).unwrap() {
                HandshakeProcessResult::InProgress { response_bytes } => socket.write_all(&response_bytes).unwrap(),
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    socket.write_all(&response_bytes).unwrap();
                    break remaining_bytes;
                }
            }
        };
        let (session, initial) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let mut publisher = Self { socket, session };
        publisher.write(initial);
        let connect = publisher.session.request_connection(app.to_owned()).unwrap();
        publisher.write(vec![connect]);
        publisher.until_published(key, pending, false);
        publisher
    }

    /// Handles the server's answers (starting with `pending`) until the publish of `key` is
    /// accepted; sends the publish request once connected (or at once, when `connected`).
    fn until_published(&mut self, key: &str, mut pending: Vec<u8>, connected: bool) {
        let mut buf = vec![0u8; 8192];
        let mut publish_sent = false;
        if connected {
            publish_sent = true;
            let publish = self.session.request_publishing(key.to_owned(), PublishRequestType::Live).unwrap();
            self.write(vec![publish]);
        }
        loop {
            let results = self.session.handle_input(&pending).unwrap();
            for result in results {
                match result {
                    ClientSessionResult::OutboundResponse(p) => self.socket.write_all(&p.bytes).unwrap(),
                    ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) if !publish_sent => {
                        publish_sent = true;
                        let publish = self.session.request_publishing(key.to_owned(), PublishRequestType::Live).unwrap();
                        self.write(vec![publish]);
                    }
                    ClientSessionResult::RaisedEvent(ClientSessionEvent::PublishRequestAccepted) => return,
                    ClientSessionResult::RaisedEvent(event) if format!("{event:?}").contains("Rejected") => {
                        panic!("publish refused: {event:?}")
                    }
                    _ => {}
                }
            }
            let n = self.socket.read(&mut buf).unwrap();
            assert!(n > 0, "server closed during set-up");
            pending = buf[..n].to_vec();
        }
    }

    /// Ends the publish (deleteStream) and keeps the connection open.
    pub fn unpublish(&mut self) {
        let results = self.session.stop_publishing().unwrap();
        self.write(results);
    }

    /// Publishes `key` again on the same connection after `unpublish`.
    pub fn republish(&mut self, key: &str) {
        self.until_published(key, Vec::new(), true);
    }

    /// True when the server has closed the connection (reads what it sent meanwhile).
    pub fn closed_by_server(&mut self, within: Duration) -> bool {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match self.socket.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
                Err(_) => break true,
            }
        };
        self.socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        closed
    }

    fn write(&mut self, results: Vec<ClientSessionResult>) {
        for result in results {
            if let ClientSessionResult::OutboundResponse(p) = result {
                self.socket.write_all(&p.bytes).unwrap();
            }
        }
    }

    /// Sends one tag stamped `ts`. Errors when the server has closed the connection.
    pub fn send(&mut self, tag: &Tag, ts: u32) -> std::io::Result<()> {
        let timestamp = RtmpTimestamp::new(ts);
        let result = if tag.kind == 9 {
            self.session.publish_video_data(tag.data.clone(), timestamp, false)
        } else {
            self.session.publish_audio_data(tag.data.clone(), timestamp, false)
        };
        if let Ok(ClientSessionResult::OutboundResponse(p)) = result {
            self.socket.write_all(&p.bytes)?;
        }
        Ok(())
    }

    /// Sends `tags` in real time, each stamped with its own time plus `offset` (wrapping).
    pub fn play(&mut self, tags: &[Tag], offset: u32) -> std::io::Result<()> {
        let started = Instant::now();
        let first = tags.first().map_or(0, |t| t.ts);
        for tag in tags {
            let due = Duration::from_millis(u64::from(tag.ts - first));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            self.send(tag, tag.ts.wrapping_add(offset))?;
        }
        Ok(())
    }
}
