//! Structured fuzzing of the RTMP edge's protocol path: well-formed chunk streams built
//! from random messages (commands with random AMF, control messages, chunk-size changes,
//! extended timestamps, FLV audio and video bodies, codec configurations), then mutated
//! (bytes flipped, inserted, removed, truncated) and fed in random splits through exactly
//! what a connection runs after the handshake: the chunk guard, rml_rtmp's server session
//! (every request accepted, so publishes reach the media path), FLV tag parsing and the
//! codec-configuration parsers. Any panic, abort or hang fails the run.
//!
//! In the suite: a bounded run (`PROPTEST_CASES`, default 256). Longer: bench/fuzz.sh.

use std::time::Instant;

use proptest::prelude::*;
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

use super::flv;
use super::guard::ChunkGuard;
use crate::media::MediaPacket;
use crate::transcode::source;

/// One AMF0 value, nested at most a few levels (the guard's own depth test covers bombs).
fn amf_value() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        any::<f64>().prop_map(|n| [&[0x00][..], &n.to_be_bytes()].concat()),
        any::<bool>().prop_map(|b| vec![0x01, b as u8]),
        "[a-zA-Z0-9_./?=&-]{0,40}".prop_map(|s| amf_string(&s)),
        Just(vec![0x05]),
        Just(vec![0x06]),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(("[a-z]{1,8}", inner.clone()), 0..6).prop_map(|props| {
                let mut v = vec![0x03];
                for (k, val) in props {
                    v.extend_from_slice(&(k.len() as u16).to_be_bytes());
                    v.extend_from_slice(k.as_bytes());
                    v.extend(val);
                }
                v.extend_from_slice(&[0, 0, 9]);
                v
            }),
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| {
                let mut v = vec![0x0a];
                v.extend_from_slice(&(items.len() as u32).to_be_bytes());
                v.extend(items.into_iter().flatten());
                v
            }),
            (any::<u32>(), prop::collection::vec(("[a-z]{1,8}", inner), 0..4)).prop_map(|(count, props)| {
                let mut v = vec![0x08];
                v.extend_from_slice(&count.to_be_bytes());
                for (k, val) in props {
                    v.extend_from_slice(&(k.len() as u16).to_be_bytes());
                    v.extend_from_slice(k.as_bytes());
                    v.extend(val);
                }
                v.extend_from_slice(&[0, 0, 9]);
                v
            }),
        ]
    })
}

fn amf_string(s: &str) -> Vec<u8> {
    [&[0x02][..], &(s.len() as u16).to_be_bytes(), s.as_bytes()].concat()
}

/// A message: (type id, message stream id, timestamp, payload).
type Message = (u8, u32, u32, Vec<u8>);

fn command() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("connect"), Just("createStream"), Just("publish"), Just("releaseStream"), Just("FCPublish"),
        Just("FCUnpublish"), Just("deleteStream"), Just("_checkbw"), Just("play"), Just("closeStream"),
    ];
    (name, 0u32..8, prop::collection::vec(amf_value(), 0..4)).prop_map(|(name, tx, args)| {
        let mut v = amf_string(name);
        v.push(0x00);
        v.extend_from_slice(&f64::from(tx).to_be_bytes());
        // connect's command object names the app; publish's arguments are null + key.
        match name {
            "connect" => v.extend([&[0x03, 0, 3][..], b"app", &amf_string("live"), &[0, 0, 9]].concat()),
            "publish" => v.extend([&[0x05][..], &amf_string("fuzz"), &amf_string("live")].concat()),
            _ => {}
        }
        v.extend(args.into_iter().flatten());
        v
    })
}

fn media_body() -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        // AVC sequence header with a real 720p record, or random bytes after the header.
        Just((9u8, [&[0x17, 0, 0, 0, 0][..], AVCC_720P].concat())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (9u8, [&[0x17, 0, 0, 0, 0][..], &b].concat())),
        prop::collection::vec(any::<u8>(), 0..600).prop_map(|b| (9u8, [&[0x17, 1, 0, 0, 0][..], &b].concat())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (9u8, [&[0x27, 1, 0, 0, 0][..], &b].concat())),
        // AAC config (LC 48 kHz stereo), raw AAC, random audio.
        Just((8u8, vec![0xaf, 0, 0x11, 0x90])),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| (8u8, [&[0xaf, 0][..], &b].concat())),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| (8u8, [&[0xaf, 1][..], &b].concat())),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| (8u8, b)),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| (9u8, b)),
    ]
}

/// SPS + PPS of an x264 1280x720 stream, as ffmpeg sends them.
const AVCC_720P: &[u8] = &[
    0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01,
    0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60, 0x01, 0x00, 0x06, 0x68,
    0xeb, 0xe3, 0xcb, 0x22, 0xc0,
];

fn message() -> impl Strategy<Value = Message> {
    let ts = prop_oneof![3 => 0u32..100_000, 1 => 0xFF_FF00u32..0x100_0100, 1 => any::<u32>()];
    prop_oneof![
        4 => (command(), ts.clone()).prop_map(|(c, t)| (20u8, 0u32, t, c)),
        1 => (command(), ts.clone()).prop_map(|(c, t)| (17u8, 0u32, t, [&[0u8][..], &c].concat())),
        2 => (prop::collection::vec(amf_value(), 0..3), ts.clone())
            .prop_map(|(v, t)| (18u8, 1u32, t, [amf_string("@setDataFrame"), amf_string("onMetaData")].into_iter().chain(v).flatten().collect())),
        6 => (media_body(), ts.clone()).prop_map(|((ty, b), t)| (ty, 1u32, t, b)),
        1 => prop_oneof![Just(128u32), Just(4096u32), 1u32..70_000, Just(0u32), Just(0x7fff_ffffu32)]
            .prop_map(|size| (1u8, 0u32, 0u32, size.to_be_bytes().to_vec())),
        1 => (3u8..=6, prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(ty, b)| (ty, 0u32, 0u32, b)),
        1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(ty, b)| (ty, 1u32, 0u32, b)),
    ]
}

/// Serialises messages into chunks the way an encoder does: a full header the first time
/// on a chunk stream, then delta headers, type-3 continuations, extended timestamps, and
/// the chunk size the stream itself set.
fn encode(messages: &[Message]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut chunk_size = 128usize;
    let mut last: std::collections::HashMap<u8, (u32, u32, u8)> = Default::default();
    for (type_id, stream_id, timestamp, payload) in messages {
        let csid = match type_id {
            1..=6 => 2u8,
            8 => 4,
            9 => 6,
            _ => 3,
        };
        let len = payload.len() as u32;
        let (field, extended) = match last.get(&csid) {
            Some(&(prev_ts, prev_stream, _)) if *timestamp >= prev_ts && prev_stream == *stream_id => {
                let delta = timestamp - prev_ts;
                out.push(0x40 | csid);
                (delta, delta >= 0xFF_FFFF)
            }
            _ => {
                out.push(csid);
                (*timestamp, *timestamp >= 0xFF_FFFF)
            }
        };
        let full = out.last() == Some(&csid);
        out.extend_from_slice(&field.min(0xFF_FFFF).to_be_bytes()[1..]);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(*type_id);
        if full {
            out.extend_from_slice(&stream_id.to_le_bytes());
        }
        if extended {
            out.extend_from_slice(&field.to_be_bytes());
        }
        for (i, piece) in payload.chunks(chunk_size.max(1)).enumerate() {
            if i > 0 {
                out.push(0xC0 | csid);
                if extended {
                    out.extend_from_slice(&field.to_be_bytes());
                }
            }
            out.extend_from_slice(piece);
        }
        last.insert(csid, (*timestamp, *stream_id, *type_id));
        ends.push(out.len());
        if *type_id == 1 && payload.len() == 4 {
            let size = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
            if size > 0 {
                chunk_size = size as usize;
            }
        }
    }
    (out, ends)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Remove(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let at = |i: usize| i % bytes.len();
        match m {
            Mutation::Flip(i, b) => {
                let i = at(*i);
                bytes[i] ^= b;
            }
            Mutation::Insert(i, b) => {
                let i = at(*i);
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = at(*i);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Mutation::Truncate(i) => {
                let i = at(*i);
                bytes.truncate(i);
            }
        }
    }
    bytes
}

/// Cuts `bytes` into reads: at `ends` (message boundaries, as a client that waits for each
/// answer sends them), or by cycling through `splits`.
fn reads<'a>(bytes: &'a [u8], ends: Option<&[usize]>, splits: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = match ends {
        Some(ends) => ends.iter().copied().filter(|&e| e < bytes.len()).collect(),
        None => {
            let mut at = 0;
            let mut cuts = Vec::new();
            for n in splits.iter().cycle() {
                at += n % 4096 + 1;
                if at >= bytes.len() {
                    break;
                }
                cuts.push(at);
            }
            cuts
        }
    };
    cuts.push(bytes.len());
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        if cut > start {
            pieces.push(&bytes[start..cut]);
            start = cut;
        }
    }
    pieces
}

/// What one connection does with its reads after the handshake, minus the socket. Returns
/// whether the peer got as far as publishing media.
fn drive(reads: &[&[u8]]) -> bool {
    let mut guard = ChunkGuard::new(crate::ingest::config::DEFAULT_MAX_MEDIA_MESSAGE);
    let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).expect("session");
    let mut media = false;
    for &piece in reads {
        if guard.inspect(piece).is_err() {
            return media;
        }
        let Ok(results) = session.handle_input(piece) else { return media };
        let mut queue = std::collections::VecDeque::from(results);
        while let Some(result) = queue.pop_front() {
            let ServerSessionResult::RaisedEvent(event) = result else { continue };
            match event {
                ServerSessionEvent::ConnectionRequested { request_id, .. }
                | ServerSessionEvent::PublishStreamRequested { request_id, .. } => {
                    if let Ok(more) = session.accept_request(request_id) {
                        queue.extend(more);
                    }
                }
                ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                    media = true;
                    if let Ok(Some(MediaPacket::VideoConfig(avcc))) = flv::parse_video(timestamp.value, &data) {
                        let _ = source::video_format(&avcc);
                    }
                }
                ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                    media = true;
                    if let Ok(Some(MediaPacket::AudioConfig(asc))) = flv::parse_audio(timestamp.value, &data) {
                        let _ = source::AacConfig::parse(&asc);
                    }
                }
                _ => {}
            }
        }
    }
    media
}

fn connect_and_publish() -> Vec<Message> {
    let connect = [amf_string("connect"), vec![0, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0], [&[0x03, 0, 3][..], b"app", &amf_string("live"), &[0, 0, 9]].concat()].concat();
    let create = [amf_string("createStream"), vec![0, 0x40, 0, 0, 0, 0, 0, 0, 0], vec![0x05]].concat();
    let publish = [amf_string("publish"), vec![0, 0x40, 0x08, 0, 0, 0, 0, 0, 0, 0x05], amf_string("fuzz"), amf_string("live")].concat();
    vec![(20, 0, 0, connect), (20, 0, 0, create), (20, 1, 0, publish)]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_protocol_path_survives_structured_random_input(
        prefix in any::<bool>(),
        messages in prop::collection::vec(message(), 0..40),
        mutations in prop::collection::vec(mutation(), 0..4),
        at_boundaries in any::<bool>(),
        splits in prop::collection::vec(1usize..5000, 1..8),
    ) {
        let mut all = if prefix { connect_and_publish() } else { Vec::new() };
        all.extend(messages);
        let (bytes, ends) = encode(&all);
        let bytes = mutate(bytes, &mutations);
        drive(&reads(&bytes, at_boundaries.then_some(&ends[..]), &splits));
    }
}

/// The well-formed path really reaches media (so the fuzzing above is not all stopped at
/// the door), and a throughput figure for the record.
#[test]
fn a_well_formed_publish_reaches_the_media_path() {
    let mut all = connect_and_publish();
    all.push((9, 1, 0, [&[0x17, 0, 0, 0, 0][..], AVCC_720P].concat()));
    all.push((9, 1, 0x100_0000, [&[0x17, 1, 0, 0, 0][..], &[0u8; 5000]].concat()));
    all.push((9, 1, 0x100_0021, [&[0x27, 1, 0, 0, 0][..], &[0u8; 300]].concat()));
    let (bytes, ends) = encode(&all);
    let pieces = reads(&bytes, Some(&ends), &[]);
    assert!(drive(&pieces));
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed().as_millis() < 200 {
        drive(&pieces);
        n += 1;
    }
    eprintln!("well-formed publish through guard + session: {:.0} per second", f64::from(n) / started.elapsed().as_secs_f64());
}
