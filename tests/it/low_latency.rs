//! Low latency on the live node: a segment still being encoded is served at once and
//! arrives chunk by chunk (one `moof` per chunk, spread over the segment's media time, not
//! in one burst), and its bytes are exactly those of the complete segment served later.
//! With `package.low_latency = false` segments appear only whole.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::support::{Appliance, Publisher, fetch_mpd, get, get_bytes, one_ladder_at_a_time, probe, segments, wait_until};

const STREAM: &str = "llcam";
const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n";
/// `package.chunk_duration`'s default: a 1 s segment is five chunks.
const CHUNKS_PER_SEGMENT: usize = 5;

/// Top-level boxes of an ISO BMFF byte string, by name.
fn boxes(data: &[u8]) -> Vec<String> {
    let (mut names, mut at) = (Vec::new(), 0);
    while at + 8 <= data.len() {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned());
        if size < 8 {
            break;
        }
        at += size;
    }
    names
}

/// A segment read while it grows: every read with the time it arrived.
struct GrowingRead {
    reads: Vec<(Instant, Vec<u8>)>,
    chunked: bool,
}

impl GrowingRead {
    fn bytes(&self) -> Vec<u8> {
        self.reads.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }

    /// When each `moof` (each chunk) was complete in what had arrived.
    fn moof_arrivals(&self) -> Vec<Instant> {
        let mut seen = Vec::new();
        let (mut arrived, mut counted) = (Vec::new(), 0);
        for (at, bytes) in &self.reads {
            seen.extend_from_slice(bytes);
            let moofs = boxes(&seen).iter().filter(|b| *b == "moof").count();
            for _ in counted..moofs {
                arrived.push(*at);
            }
            counted = moofs;
        }
        arrived
    }
}

/// Requests the segment after the newest one the MPD lists, until the node serves it (its
/// first chunk exists), and reads it to the end as it arrives.
fn read_next_segment(app: &Appliance, rendition: &str) -> (String, u64, GrowingRead) {
    let mpd = fetch_mpd(app, STREAM).expect("MPD");
    let rep = mpd.periods.last().unwrap().adaptations.iter().flat_map(|a| &a.representations).find(|r| r.id.as_deref() == Some(rendition)).expect("rendition");
    let (init, listed) = segments(STREAM, rep);
    let newest = listed.last().unwrap();
    let next = newest.number + 1;
    let url = newest.url.replace(&format!("-{}.m4s", newest.number), &format!("-{next}.m4s"));
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut response = wait_until(&format!("segment {next} of {rendition} to start"), Duration::from_secs(5), || {
        let response = http.get(app.url(&url)).send().unwrap();
        (response.status() == 200).then_some(response)
    });
    let chunked = response.content_length().is_none();
    let mut reads = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = response.read(&mut buffer).unwrap_or_else(|e| panic!("reading {url}: {e}"));
        if n == 0 {
            break;
        }
        reads.push((Instant::now(), buffer[..n].to_vec()));
    }
    (format!("{init}|{url}"), next, GrowingRead { reads, chunked })
}

#[test]
fn a_segment_being_encoded_streams_chunk_by_chunk_and_equals_the_complete_segment() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(Some(CONFIG));
    let mut publisher = Publisher::start(&app.publish_url("live", STREAM), 40, "640x360");
    wait_until("three listed segments", Duration::from_secs(30), || fetch_mpd(&app, STREAM).filter(|m| m.periods.iter().any(|p| p.adaptations.iter().any(|a| a.representations.iter().any(|r| segments(STREAM, r).1.len() >= 3)))));
    let mpd = fetch_mpd(&app, STREAM).unwrap();
    let ids: Vec<String> = mpd.periods.last().unwrap().adaptations.iter().flat_map(|a| &a.representations).filter_map(|r| r.id.clone()).collect();
    assert!(ids.iter().any(|id| id == "audio"), "{ids:?}");

    for rendition in &ids {
        let (urls, number, read) = read_next_segment(&app, rendition);
        let (init_url, url) = urls.split_once('|').unwrap();
        assert!(read.chunked, "{rendition} segment {number}: a segment being encoded has no Content-Length");
        let arrivals = read.moof_arrivals();
        let spread = arrivals.last().unwrap().duration_since(arrivals[0]);
        let gaps: Vec<u128> = arrivals.windows(2).map(|w| w[1].duration_since(w[0]).as_millis()).collect();
        println!("{rendition} segment {number}: {} chunks, {} reads, chunk gaps {gaps:?} ms", arrivals.len(), read.reads.len());
        // Whole frames (or AAC frames) on a 200 ms grid: five chunks in a 1 s segment.
        assert_eq!(arrivals.len(), CHUNKS_PER_SEGMENT, "{rendition} segment {number}: {:?}", boxes(&read.bytes()));
        // Streamed as encoded: the chunks arrive over the segment's media time, not at once
        // at its end (they are cut 200 ms of media apart; more than two chunk durations
        // from the first to the last leaves room for a loaded machine).
        assert!(spread >= Duration::from_millis(400), "{rendition} segment {number}: chunks arrived within {spread:?}: {gaps:?}");
        // The same bytes as the complete segment, which has a Content-Length.
        let complete = get(&app.url(url));
        assert_eq!(complete.status(), 200);
        assert!(complete.content_length().is_some(), "a complete segment has a Content-Length");
        let complete = complete.bytes().unwrap().to_vec();
        assert!(complete == read.bytes(), "{rendition} segment {number}: streamed {} bytes, complete {} bytes", read.bytes().len(), complete.len());
        assert_eq!(boxes(&complete).iter().filter(|b| *b == "styp").count(), 1, "one styp per segment: {:?}", boxes(&complete));
        if rendition != "audio" {
            let (codec, _, _, frames) = probe(&get_bytes(&app.url(init_url)), &complete);
            assert_eq!(codec, "h264");
            assert!(frames[0].1 && frames.len() >= 25, "{rendition} segment {number} starts on a keyframe and holds a second: {} frames", frames.len());
        }
    }
    assert!(publisher.is_running(), "the publisher kept going");
}

#[test]
fn without_low_latency_segments_appear_only_whole() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(Some(&format!("{CONFIG}[package]\nlow_latency = false\n")));
    let _publisher = Publisher::start(&app.publish_url("live", STREAM), 20, "640x360");
    wait_until("three listed segments", Duration::from_secs(30), || fetch_mpd(&app, STREAM).filter(|m| m.periods.iter().any(|p| p.adaptations.iter().any(|a| a.representations.iter().any(|r| segments(STREAM, r).1.len() >= 3)))));
    let (_, number, read) = read_next_segment(&app, "audio");
    assert!(!read.chunked, "segment {number} was served before it was complete");
    let bytes = read.bytes();
    assert_eq!(boxes(&bytes).iter().filter(|b| *b == "moof").count(), 1, "one fragment, no chunks: {:?}", boxes(&bytes));
}
