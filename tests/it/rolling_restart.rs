//! A rolling restart of the live tier while four streams are on air, as Kubernetes rolls a
//! StatefulSet: three live nodes, an origin and an edge on 127.0.0.1; four broadcasters,
//! each an ffmpeg that reconnects on its own to the next live node's RTMP port (as a
//! Service would send it); one viewer per stream polling the edge. Each live node in turn
//! gets SIGTERM, drains (its streams are handed over to the next node on the ring), exits,
//! and is started again with its data directory; the next waits until it has rejoined.
//!
//! Every viewer request succeeds (the MPD and every listed segment, through the edge),
//! every stream keeps one presentation (the same availabilityStartTime, never a static
//! MPD), and shows at most one Period change per node restart. An HLS viewer per stream
//! follows the video and audio media playlists through the edge as well: every playlist
//! and listed segment answers, a media sequence number names one segment throughout (the
//! hand-over carries the numbering on), and a playlist never ends. A relaying node's
//! restart drops its relay: the owner holds the stream (`package.hold_last_frame`) and the
//! broadcaster's reconnect through another node continues its Period (counted, printed).
//! A draining node hands each stream's last picture to the next owner, which continues the
//! media where it ended and holds it until the broadcaster is back: the media lost at each
//! Period change is at most 2 s (asserted: none, in practice); the longest wall-clock wait
//! for a new segment at the edge is printed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rackcast::cluster::Ring;

use crate::support::*;

const LIVE: [&str; 3] = ["live-0", "live-1", "live-2"];
const STREAMS: usize = 4;
/// Most media time lost at a hand-over (seconds): the issue's "no stream's segments stop
/// for more than 2 s". See the test.
const MAX_MEDIA_GAP: f64 = 2.0;

fn config(nodes: &[ClusterNode]) -> String {
    // One small rung keeps four transcodes beside three nodes, four encoders and the
    // viewers within two cores.
    let mut text = String::from(
        "[cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"150ms\"\nfail_after = 2\nrise_after = 2\n\
         relay_secret = \"rolling-restart-test-secret\"\ndrain_grace = \"10s\"\n\n\
         [package]\nhold_last_frame = \"5s\"\n\n\
         [[transcode.rungs]]\nheight = 144\nbitrate_kbps = 200\n",
    );
    for n in nodes {
        text += &n.toml();
    }
    text
}

/// An ffmpeg broadcaster that reconnects at once whenever its connection ends, to the next
/// address of `rtmp` each time (the first one first).
struct Broadcaster {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u32>>,
}

impl Broadcaster {
    fn start(stream: String, rtmp: Vec<u16>, first: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut connections = 0;
            let mut next = first;
            while !done.load(Ordering::SeqCst) {
                let url = format!("rtmp://127.0.0.1:{}/live/{stream}", rtmp[next % rtmp.len()]);
                next += 1;
                let args = [
                    "-re", "-f", "lavfi", "-i", "testsrc2=size=256x144:rate=15", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                    "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15", "-pix_fmt", "yuv420p", "-b:v", "300k",
                    "-c:a", "aac", "-b:a", "64k",
                ];
                let mut ffmpeg = Publisher::with_args(&url, &args);
                connections += 1;
                while ffmpeg.is_running() && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            connections
        });
        Self { stop, thread: Some(thread) }
    }

    /// Stops it; how many connections it made.
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// What one viewer saw of one stream through the edge.
#[derive(Debug, Default)]
struct Seen {
    /// Requests that failed once the stream was first served: (what, status).
    failures: Vec<(String, u16)>,
    availability_starts: Vec<String>,
    static_mpds: u32,
    /// Period ids in the order they appeared, with when.
    periods: Vec<(String, Instant)>,
    /// Segments fetched, and the longest wall-clock time without a new one listed.
    segments: u32,
    longest_wait: Duration,
    /// Each Period's start and end (seconds after availabilityStartTime), newest MPD's.
    bounds: BTreeMap<String, (f64, Option<f64>)>,
}

/// Fetches `path` from the edge the first time a viewer sees it listed: `None` when it was
/// fetched before, else its status (0 when no answer came).
fn fetch_once(edge: &str, path: &str, fetched: &mut BTreeSet<String>) -> Option<u16> {
    fetched.insert(path.to_owned()).then(|| client().get(format!("http://{edge}{path}")).send().map(|r| r.status().as_u16()).unwrap_or(0))
}

/// Polls the stream's MPD at the edge and fetches each newly listed video segment.
fn watch(edge: String, stream: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mpd_url = format!("http://{edge}/live/{stream}/manifest.mpd");
    let mut fetched = BTreeSet::new();
    let mut last_new = None::<Instant>;
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(250));
        let Ok(response) = client().get(&mpd_url).send() else { continue };
        let status = response.status().as_u16();
        let mut seen = seen.lock().unwrap();
        if status != 200 {
            if last_new.is_some() {
                seen.failures.push(("MPD".into(), status));
            }
            continue;
        }
        let text = response.text().unwrap();
        let mpd = dash_mpd_core::parse(&text).unwrap_or_else(|e| panic!("MPD does not parse: {e:?}\n{text}"));
        if mpd.mpdtype.as_deref() == Some("static") {
            seen.static_mpds += 1;
        }
        let ast = mpd.availabilityStartTime.map(|t| t.to_string()).unwrap_or_default();
        if seen.availability_starts.last() != Some(&ast) {
            seen.availability_starts.push(ast);
        }
        for period in &mpd.periods {
            let id = period.id.clone().unwrap_or_default();
            if !seen.periods.iter().any(|(p, _)| *p == id) {
                seen.periods.push((id.clone(), Instant::now()));
            }
            let start = period.start.map_or(0.0, |s| s.as_secs_f64());
            seen.bounds.insert(id, (start, period.duration.map(|d| start + d.as_secs_f64())));
            let Some(video) = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")) else { continue };
            let Some(rep) = video.representations.first() else { continue };
            let (_, list) = segments(&stream, rep);
            for segment in list {
                let Some(got) = fetch_once(&edge, &segment.url, &mut fetched) else { continue };
                if got != 200 {
                    seen.failures.push((segment.url.clone(), got));
                }
                seen.segments += 1;
                let now = Instant::now();
                if let Some(previous) = last_new {
                    seen.longest_wait = seen.longest_wait.max(now - previous);
                }
                last_new = Some(now);
            }
        }
    }
}

/// What one HLS viewer saw of one stream through the edge.
#[derive(Debug, Default)]
struct SeenHls {
    /// Requests that failed once the playlist was first served: (what, status).
    failures: Vec<String>,
    /// Media sequence numbers named for two different segments: (rendition, msn, URLs).
    conflicts: Vec<String>,
    /// Segments fetched, per rendition, and the most discontinuities a playlist listed.
    segments: HashMap<String, u32>,
    discontinuities: usize,
    ended: bool,
}

/// Polls the video and audio media playlists of the stream's multivariant playlist at the
/// edge, as a plain HLS player does, and fetches each newly listed segment.
fn watch_hls(edge: String, stream: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<SeenHls>>) {
    // The first variant's playlist and the audio group's (`{rendition}/media.m3u8`), once the
    // multivariant offers both (the audio may be playable before the video).
    let renditions = wait_until(&format!("{stream}'s multivariant playlist with video and audio"), Duration::from_secs(30), || {
        let multivariant = get(&format!("http://{edge}/live/{stream}/master.m3u8")).text().ok()?;
        let mut paths: Vec<&str> = multivariant.lines().filter(|l| !l.starts_with('#')).take(1).collect();
        paths.extend(multivariant.lines().filter_map(|l| l.split("URI=\"").nth(1)).map(|uri| uri.trim_end_matches('"')));
        let renditions: Vec<String> = paths.iter().map(|path| path.trim_end_matches("/media.m3u8").to_owned()).collect();
        (renditions.len() == 2).then_some(renditions)
    });
    let mut names: HashMap<(String, u64), String> = HashMap::new();
    let mut fetched = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(250));
        for rendition in &renditions {
            let Ok(response) = client().get(format!("http://{edge}/live/{stream}/{rendition}/media.m3u8")).send() else { continue };
            let mut seen = seen.lock().unwrap();
            if response.status() != 200 {
                seen.failures.push(format!("{rendition}/media.m3u8: {}", response.status()));
                continue;
            }
            let playlist = crate::hls::parse_media_of(&stream, &response.text().unwrap(), rendition);
            seen.ended |= playlist.ended;
            seen.discontinuities = seen.discontinuities.max(playlist.discontinuities);
            for segment in &playlist.segments {
                let named = names.entry((rendition.clone(), segment.sequence)).or_insert_with(|| segment.url.clone());
                if *named != segment.url {
                    seen.conflicts.push(format!("{rendition} {}: {named} and {}", segment.sequence, segment.url));
                }
                let Some(got) = fetch_once(&edge, &segment.url, &mut fetched) else { continue };
                if got != 200 {
                    seen.failures.push(format!("{}: {got}", segment.url));
                }
                *seen.segments.entry(rendition.clone()).or_default() += 1;
            }
        }
    }
}

#[test]
fn a_rolling_restart_of_the_live_tier_hands_every_stream_over_with_one_period_change() {
    // Five nodes, four encoders and four transcodes fill two cores: no other test beside them
    // (they starved the player matrix once), and the media gaps printed are this test's own.
    let _host = host_to_itself();
    let node = ClusterNode::new;
    let nodes = [
        node(LIVE[0], r#"["live"]"#),
        node(LIVE[1], r#"["live"]"#),
        node(LIVE[2], r#"["live"]"#),
        node("origin", r#"["origin"]"#),
        node("edge", r#"["edge"]"#),
    ];
    let config = config(&nodes);
    let mut running: Vec<Appliance> = nodes.iter().map(|n| Appliance::start_node(&config, n.id)).collect();
    for n in &nodes {
        wait_serving(&format!("127.0.0.1:{}", n.http), Duration::from_secs(10));
    }
    let http = |i: usize| format!("127.0.0.1:{}", nodes[i].http);

    // Four streams, each live node owning at least one; each broadcaster first connects to
    // a node that is not its stream's owner half of the time (a relay, as through a Service).
    let ring = Ring::new(LIVE.map(String::from), 160);
    let mut streams: Vec<String> = Vec::new();
    for owner in LIVE.iter().cycle().take(STREAMS) {
        let name = (0..).map(|i| format!("show{i}")).find(|s| ring.owner(s) == Some(*owner) && !streams.contains(s)).unwrap();
        streams.push(name);
    }
    let rtmp: Vec<u16> = nodes[..3].iter().map(|n| n.rtmp).collect();
    let broadcasters: Vec<Broadcaster> = streams.iter().enumerate().map(|(i, s)| Broadcaster::start(s.clone(), rtmp.clone(), i)).collect();
    for stream in &streams {
        wait_until(&format!("{stream} at the edge"), Duration::from_secs(30), || {
            let mpd = get(&format!("http://{}/live/{stream}/manifest.mpd", http(4)));
            (mpd.status() == 200 && mpd.text().unwrap().contains("<S ")).then_some(())
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = streams.iter().map(|_| Arc::default()).collect();
    let seen_hls: Vec<Arc<Mutex<SeenHls>>> = streams.iter().map(|_| Arc::default()).collect();
    let mut viewers: Vec<_> = streams
        .iter()
        .zip(&seen)
        .map(|(stream, seen)| {
            let (edge, stream, stop, seen) = (http(4), stream.clone(), Arc::clone(&stop), Arc::clone(seen));
            thread::spawn(move || watch(edge, stream, stop, seen))
        })
        .collect();
    viewers.extend(streams.iter().zip(&seen_hls).map(|(stream, seen)| {
        let (edge, stream, stop, seen) = (http(4), stream.clone(), Arc::clone(&stop), Arc::clone(seen));
        thread::spawn(move || watch_hls(edge, stream, stop, seen))
    }));
    thread::sleep(Duration::from_secs(3));

    // Roll: each live node in turn.
    // A restarted node's log starts empty: count its adoptions before.
    let adoptions = |app: &Appliance| app.logs().matches("stream taken over from a draining node").count();
    // A relaying node's restart drops its relay: the owner holds the stream until the
    // broadcaster is back through another node (package.hold_last_frame).
    let resumed_holds = |app: &Appliance| app.logs().matches("broadcaster reconnected within the hold").count();
    let mut restarts = Vec::new();
    let (mut handed_over, mut held) = (0, 0);
    for (i, id) in LIVE.iter().enumerate() {
        let started = Instant::now();
        let app = running.remove(i);
        let app = app.restart();
        let drained = started.elapsed();
        running.insert(i, app);
        wait_until(&format!("{id} up again at every other node"), Duration::from_secs(20), || {
            (0..nodes.len()).filter(|&j| j != i).all(|j| {
                get_json(&format!("http://{}/api/v1/cluster", http(j)))["members"]
                    .as_array()
                    .is_some_and(|members| members.iter().any(|m| m["id"] == *id && m["up"] == true))
            })
            .then_some(())
        });
        println!("rolling restart: {id} drained and exited in {:.2} s, rejoined after {:.2} s", drained.as_secs_f64(), started.elapsed().as_secs_f64());
        restarts.push(started);
        // Let every stream settle on its new node before the next restart.
        thread::sleep(Duration::from_secs(4));
        if let Some(next) = running.get(i + 1).filter(|_| i + 1 < LIVE.len()) {
            handed_over += adoptions(next);
            held += resumed_holds(next);
        }
    }
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for viewer in viewers {
        viewer.join().unwrap();
    }
    let connections: Vec<u32> = broadcasters.into_iter().map(Broadcaster::finish).collect();
    handed_over += running[..LIVE.len()].iter().map(adoptions).sum::<usize>();
    held += running[..LIVE.len()].iter().map(resumed_holds).sum::<usize>();

    for (stream, seen) in streams.iter().zip(&seen) {
        let seen = seen.lock().unwrap();
        // Media time lost at each Period change: from where one Period's media ends to where
        // the next starts (the broadcaster's reconnect, rounded up to the segment grid).
        let gaps: Vec<f64> = seen
            .periods
            .windows(2)
            .filter_map(|w| {
                let (before, after) = (seen.bounds.get(&w[0].0)?, seen.bounds.get(&w[1].0)?);
                Some(after.0 - before.1?)
            })
            .collect();
        println!(
            "{stream}: {} segments, {} Periods, media gaps at Period changes {:?} s, longest wait for a new segment at the edge {:.2} s (polled every 250 ms), failures {:?}",
            seen.segments,
            seen.periods.len(),
            gaps.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>(),
            seen.longest_wait.as_secs_f64(),
            seen.failures
        );
        assert!(seen.failures.is_empty(), "{stream}: failed viewer requests {:?}", seen.failures);
        assert_eq!(seen.static_mpds, 0, "{stream}: the MPD turned static during the roll");
        assert_eq!(seen.availability_starts.len(), 1, "{stream}: one presentation throughout: {:?}", seen.availability_starts);
        // At most one Period change per restart: new Periods first seen between one
        // restart's start and the next's.
        for (k, start) in restarts.iter().enumerate() {
            let end = restarts.get(k + 1).copied();
            let changes = seen.periods.iter().skip(1).filter(|(_, at)| at >= start && end.is_none_or(|e| *at < e)).count();
            assert!(changes <= 1, "{stream}: {changes} Period changes during the restart of {}: {:?}", LIVE[k], seen.periods);
        }
        assert!(seen.periods.len() >= 2, "{stream} moved at least once (its owner restarted): {:?}", seen.periods);
        // Contiguous or later, never overlapping. The draining node hands each stream's last
        // picture to the next owner, whose held Period starts where the old one's media
        // ended (0 to 0.07 s here); the broadcaster's reconnect no longer matters. Without
        // holds it did: its reconnect plus up to one segment of grid, 0.05 to 1.5 s on an
        // idle machine, 2.7 s beside other tests.
        assert!(gaps.iter().all(|g| (-0.001..=MAX_MEDIA_GAP).contains(g)), "{stream}: media gaps at Period changes {gaps:?}");
    }
    for (stream, seen) in streams.iter().zip(&seen_hls) {
        let seen = seen.lock().unwrap();
        println!(
            "{stream} over HLS: segments {:?}, up to {} discontinuities listed, failures {:?}, sequence conflicts {:?}",
            seen.segments, seen.discontinuities, seen.failures, seen.conflicts
        );
        assert!(seen.failures.is_empty(), "{stream}: failed HLS requests {:?}", seen.failures);
        assert!(seen.conflicts.is_empty(), "{stream}: a media sequence number named two segments: {:?}", seen.conflicts);
        assert!(!seen.ended, "{stream}: a playlist ended during the roll");
        assert!(seen.discontinuities >= 1, "{stream}: the move is a discontinuity in the playlists");
        assert_eq!(seen.segments.len(), 2, "{stream}: segments of the video and the audio playlist fetched: {:?}", seen.segments);
    }
    println!("broadcaster connections {connections:?}; streams taken over with their timeline: {handed_over}; held through a relay's restart and resumed: {held}");
    assert!(handed_over >= STREAMS, "every stream was handed over at least once ({handed_over})");
}
