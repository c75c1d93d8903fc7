#!/usr/bin/env python3
"""Rewrites a rackcast MPD (stdin) into a candidate form (stdout), to try an MPD form on
every player of tests/players.rs without changing the appliance:

    FORM=duration,atc,spd=2,msd=1 RACKCAST_PLAYERS_MPD_FILTER="python3 tests/players/mpd_form.py" \
        cargo test --test players -- --nocapture

FORM is a comma list of
  duration   SegmentTimeline -> SegmentTemplate@duration (+ startNumber on the Period grid)
  atc        availabilityTimeComplete="false" on every SegmentTemplate
  spd=N      suggestedPresentationDelay=PTNS
  msd=N      maxSegmentDuration=PTNS
  mbt=N      minBufferTime=PTNS
"""
import os, re, sys
mpd = sys.stdin.read()
opts = dict((o.split('=') + [''])[:2] for o in os.environ.get('FORM', '').split(',') if o)
def attr(name, value):
    global mpd
    root_end = mpd.index('>', mpd.index('<MPD'))
    root = mpd[:root_end]
    if re.search(r' %s="[^"]*"' % name, root):
        root = re.sub(r' %s="[^"]*"' % name, ' %s="%s"' % (name, value), root)
    else:
        root += ' %s="%s"' % (name, value)
    mpd = root + mpd[root_end:]
if 'spd' in opts: attr('suggestedPresentationDelay', 'PT%sS' % opts['spd'])
if 'msd' in opts: attr('maxSegmentDuration', 'PT%sS' % opts['msd'])
if 'mbt' in opts: attr('minBufferTime', 'PT%sS' % opts['mbt'])
def template(m):
    head, timeline = m.group(1), m.group(2)
    scale = int(re.search(r'timescale="(\d+)"', head).group(1))
    if 'duration' in opts:
        ss = re.findall(r'<S t="(\d+)" d="(\d+)"', timeline)
        n_first = int(re.search(r'startNumber="(\d+)"', head).group(1))
        pto = int((re.search(r'presentationTimeOffset="(\d+)"', head) or [0, 0])[1])
        t_first = int(ss[0][0]) if ss else 0
        start = n_first - round((t_first - pto) / scale)
        head = re.sub(r'startNumber="\d+"', 'startNumber="%d"' % start, head)
        head += ' duration="%d"' % scale
        timeline = None
    if 'atc' in opts:
        head += ' availabilityTimeComplete="false"'
    if timeline is None:
        return head + '/>'
    return head + '>' + timeline + '</SegmentTemplate>'
mpd = re.sub(r'(<SegmentTemplate [^>]*?)>(<SegmentTimeline>.*?</SegmentTimeline>)</SegmentTemplate>', template, mpd, flags=re.S)
sys.stdout.write(mpd)
