"""Minimal, generic DASH MPD reader for the benchmark.

Handles: multiple Periods (the last one is used), BaseURL at MPD / Period /
AdaptationSet / Representation level, SegmentTemplate at AdaptationSet and/or
Representation level (attributes inherited and overridden), @media and
@initialization with $RepresentationID$, $Number$, $Time$, $Bandwidth$ (with
optional %0Nd width), SegmentTimeline S@t/@d/@r (r = -1 expanded up to the next
S or, for the last S, not expanded), @timescale, @startNumber,
@presentationTimeOffset, Period@start.  A SegmentTemplate without a timeline
(@duration + $Number$) is expanded from availabilityStartTime and the current
wall clock is not attempted: the benchmark only needs timelines.
"""
import re
import xml.etree.ElementTree as ET
from urllib.parse import urljoin

NS = "{urn:mpeg:dash:schema:mpd:2011}"


def _tag(el):
    t = el.tag
    return t.split("}", 1)[1] if "}" in t else t


def _children(el, name):
    return [c for c in el if _tag(c) == name]


def _child(el, name):
    for c in el:
        if _tag(c) == name:
            return c
    return None


def parse_duration(s):
    """ISO-8601 duration (PnDTnHnMnS) -> seconds."""
    if not s:
        return None
    m = re.fullmatch(r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?", s.strip())
    if not m:
        return None
    d, h, mi, se = (float(x) if x else 0.0 for x in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + se


def _fill(template, rep_id, bandwidth, number=None, time=None):
    def sub(m):
        name, fmt = m.group(1), m.group(2)
        if name == "":
            return "$"
        val = {"RepresentationID": rep_id, "Number": number, "Time": time,
               "Bandwidth": bandwidth}.get(name)
        if val is None:
            return m.group(0)
        if fmt and name != "RepresentationID":
            return ("%" + fmt[1:]) % int(val)
        return str(val)
    return re.sub(r"\$(RepresentationID|Number|Time|Bandwidth|)(%0\d+d)?\$", sub, template)


def _base(url, el):
    b = _child(el, "BaseURL")
    if b is not None and b.text and b.text.strip():
        return urljoin(url, b.text.strip())
    return url


def _is_video(aset, rep):
    for el in (rep, aset):
        ct = el.get("contentType") or ""
        mt = el.get("mimeType") or ""
        if ct == "video" or mt.startswith("video/"):
            return True
        if ct == "audio" or mt.startswith("audio/"):
            return False
    codecs = (rep.get("codecs") or aset.get("codecs") or "").lower()
    if codecs.startswith(("avc", "hvc", "hev", "av01", "vp09")):
        return True
    return rep.get("width") is not None or aset.get("width") is not None


def segment_template(aset, rep):
    """The SegmentTemplate attributes in force for `rep` (the AdaptationSet's, overridden by
    the Representation's) and its SegmentTimeline element, or None."""
    attrs, timeline = {}, None
    for el in (aset, rep):
        st = _child(el, "SegmentTemplate")
        if st is not None:
            attrs.update(st.attrib)
            tl = _child(st, "SegmentTimeline")
            if tl is not None:
                timeline = tl
    return attrs, timeline


def first_video_representation(mpd_text, mpd_url):
    """Return a dict describing the first video Representation of the last
    Period, or None if there is none yet.

    {"rep_id", "timescale", "pto", "period_start", "init_url",
     "media_template", "uses_time", "uses_number",
     "segments": [{"n", "t", "d", "url"}...], "next_url": url or None,
     "mpd_type", "ast", "period_count"}
    """
    root = ET.fromstring(mpd_text)
    base = _base(mpd_url, root)
    periods = _children(root, "Period")
    if not periods:
        return None
    period = periods[-1]
    pbase = _base(base, period)
    period_start = parse_duration(period.get("start")) or 0.0
    for aset in _children(period, "AdaptationSet"):
        reps = _children(aset, "Representation")
        for rep in reps:
            if not _is_video(aset, rep):
                continue
            abase = _base(pbase, aset)
            rbase = _base(abase, rep)
            attrs, timeline = segment_template(aset, rep)
            if "media" not in attrs:
                continue
            rep_id = rep.get("id", "")
            bw = rep.get("bandwidth", "0")
            timescale = int(attrs.get("timescale", "1"))
            start_number = int(attrs.get("startNumber", "1"))
            pto = int(attrs.get("presentationTimeOffset", "0"))
            media = attrs["media"]
            init = attrs.get("initialization")
            segs = []
            if timeline is not None:
                ss = _children(timeline, "S")
                t = 0
                n = start_number
                for i, s in enumerate(ss):
                    if s.get("t") is not None:
                        t = int(s.get("t"))
                    d = int(s.get("d"))
                    r = int(s.get("r", "0"))
                    if r < 0:
                        if i + 1 < len(ss) and ss[i + 1].get("t") is not None:
                            r = max(0, (int(ss[i + 1].get("t")) - t) // d - 1)
                        else:
                            r = 0
                    for _ in range(r + 1):
                        segs.append({"n": n, "t": t, "d": d,
                                     "url": urljoin(rbase, _fill(media, rep_id, bw, n, t))})
                        t += d
                        n += 1
            next_url = None
            if segs:
                last = segs[-1]
                next_url = urljoin(rbase, _fill(media, rep_id, bw, last["n"] + 1, last["t"] + last["d"]))
            elif "$Number$" in media or re.search(r"\$Number%0\d+d\$", media):
                if "$Time$" not in media:
                    next_url = urljoin(rbase, _fill(media, rep_id, bw, start_number, None))
            return {
                "rep_id": rep_id,
                "timescale": timescale,
                "pto": pto,
                "period_start": period_start,
                "period_id": period.get("id"),
                "period_count": len(periods),
                "init_url": urljoin(rbase, _fill(init, rep_id, bw)) if init else None,
                "media_template": media,
                "segments": segs,
                "next_url": next_url,
                "mpd_type": root.get("type"),
                "ast": root.get("availabilityStartTime"),
                "start_number": start_number,
            }
    return None
