//! `rackcast transcode` and `rackcast probe`, run as an admin would: a real file through
//! the live pipeline into a static DASH package that ffprobe decodes, a backend this host
//! lacks refused with its reason, a template override that names a property the installed
//! element lacks refused before anything runs, and the probe's account of this host.

use std::process::{Command, Output};

use dash_mpd_core as dash;
use crate::support::*;

fn rackcast(args: &[&str]) -> Output {
    let _host = host_shared();
    Command::new(env!("CARGO_BIN_EXE_rackcast")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// 4 s of 640x360 at 30 fps, x264's default frame threading (no slices), AAC-LC.
fn source(dir: &std::path::Path) -> String {
    let path = dir.join("source.mp4").to_str().unwrap().to_owned();
    let made = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "4", "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", &path])
        .status()
        .unwrap();
    assert!(made.success());
    path
}

#[test]
fn a_file_becomes_a_static_dash_package_whose_segments_all_start_with_a_keyframe() {
    let dir = tempfile::tempdir().unwrap();
    let input = source(dir.path());
    let out = dir.path().join("package");
    let run = rackcast(&["transcode", &input, "--out", out.to_str().unwrap(), "--ladder", "360p=600k,240p=300k", "--x264-preset", "ultrafast"]);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("transcoded 4.0") && stdout.contains("backend software on cpu; rungs 360p, 240p"), "{stdout}");

    let manifest = std::fs::read_to_string(out.join("manifest.mpd")).unwrap();
    let mpd = dash::parse(&manifest).unwrap();
    assert_eq!(mpd.mpdtype.as_deref(), Some("static"));
    let total = mpd.mediaPresentationDuration.unwrap().as_secs_f64();
    assert!((3.9..4.2).contains(&total), "presentation lasts {total} s");
    // The support helper resolves URLs under /live/{stream}/; the package is relative.
    let file = |url: &str| out.join(url.trim_start_matches("/live//"));
    let mut video = 0;
    for adaptation in &mpd.periods[0].adaptations {
        for rep in &adaptation.representations {
            let (init_url, list) = segments("", rep);
            let init = std::fs::read(file(&init_url)).unwrap_or_else(|e| panic!("{init_url}: {e}"));
            let covered: f64 = list.iter().map(|s| s.duration as f64 / s.timescale as f64).sum();
            assert!((3.9..4.2).contains(&covered), "{:?}: segments cover {covered} s", rep.id);
            if adaptation.contentType.as_deref() != Some("video") {
                continue;
            }
            video += 1;
            // The source's first frame is shown at 67 ms (x264's B-frame delay), as from a
            // broadcaster: segments follow the media-time grid, one per second between the
            // first and the last.
            assert!((4..=5).contains(&list.len()), "{list:?}");
            assert!(list[1..list.len() - 1].iter().all(|s| s.duration == s.timescale), "{list:?}");
            for segment in &list {
                let bytes = std::fs::read(file(&segment.url)).unwrap();
                let (codec, width, _, frames) = probe(&init, &bytes);
                assert_eq!((codec.as_str(), width), ("h264", rep.width.unwrap() as u32));
                assert!(frames.first().is_some_and(|f| f.1), "{}: segment starts with a keyframe", segment.url);
                let expected = (segment.duration as f64 / segment.timescale as f64 * 30.0).round() as usize;
                assert!(frames.len().abs_diff(expected) <= 1, "{}: {} frames, {expected} expected", segment.url, frames.len());
            }
        }
    }
    assert_eq!(video, 2);

    // A backend this host lacks, asked for by name: refused with the reason.
    let gpu = rackcast(&["transcode", &input, "--out", out.to_str().unwrap(), "--backend", "nvenc"]);
    let (_, stderr) = text(&gpu);
    assert!(!gpu.status.success());
    assert!(stderr.contains("transcode.backends starts with nvenc, which cannot run here (no device node: /dev/nvidia0"), "{stderr}");
}

#[test]
fn a_template_override_that_does_not_match_the_installed_elements_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/software.pipeline")).unwrap();
    // As if written for a GStreamer whose x264enc had a `lookahead-frames` property.
    std::fs::write(pipelines.join("software.pipeline"), template.replace("tune=zerolatency", "tune=zerolatency lookahead-frames=10")).unwrap();
    let config = dir.path().join("rackcast.toml");
    std::fs::write(&config, format!("[transcode]\npipelines_dir = {:?}\n", pipelines.to_str().unwrap())).unwrap();
    let input = source(dir.path());
    let run = rackcast(&["transcode", &input, "--out", dir.path().join("out").to_str().unwrap(), "--config", config.to_str().unwrap()]);
    let (_, stderr) = text(&run);
    assert!(!run.status.success());
    assert!(stderr.contains("element x264enc of the installed GStreamer 1.") && stderr.contains("has no writable property lookahead-frames"), "{stderr}");
    assert!(stderr.contains("software.pipeline"), "the error names the file: {stderr}");
    // The probe says the same, and still exits 0.
    let probe = rackcast(&["probe", "--config", config.to_str().unwrap()]);
    let (stdout, _) = text(&probe);
    assert!(probe.status.success());
    assert!(stdout.contains("software    missing:") && stdout.contains("lookahead-frames"), "{stdout}");
}

#[test]
fn the_probe_lists_every_backend_and_why_the_missing_ones_are_missing() {
    let probe = rackcast(&["probe"]);
    let (stdout, stderr) = text(&probe);
    assert!(probe.status.success(), "{stderr}");
    assert!(stdout.contains("software    usable on cpu (template embedded)"), "{stdout}");
    for backend in ["nvenc", "nvdec-x264", "vaapi"] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(&format!("{backend} "))).unwrap_or_else(|| panic!("{backend}: {stdout}"));
        assert!(line.contains("missing: no device node") || line.contains("missing: no driver") || line.contains("missing: plugin absent"), "{line}");
    }
    assert!(stdout.contains("CPU budget 1.70 cores") || !stdout.contains("CPU cores      2"), "85% of the cores: {stdout}");
    let json: serde_json::Value = serde_json::from_slice(&rackcast(&["probe", "--json"]).stdout).unwrap();
    assert_eq!(json["backends"].as_array().unwrap().len(), 4);
    assert!(json["capabilities"]["elements"].as_array().unwrap().iter().any(|e| e == "x264enc"), "{json}");
    assert_eq!(json["preference"], serde_json::json!(["software"]));
}
