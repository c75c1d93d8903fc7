#!/usr/bin/env python3
"""Rewrites a rackcast MPD (stdin) into a candidate form (stdout), to try an MPD change on
every player of tests/it/players.rs without changing the appliance:

    FORM=atc,spd=2,msd=1 RACKCAST_PLAYERS_MPD_FILTER="python3 tests/players/mpd_form.py" \
        cargo test --test it players:: -- --nocapture

(RACKCAST_PLAYERS_FORM=timeline|number gives every player the same one of the appliance's
two manifest forms.) FORM is a comma list of
  atc        availabilityTimeComplete="false" on every SegmentTemplate
  noatc      no availabilityTimeComplete attribute
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
    head = re.sub(r' availabilityTimeComplete="[^"]*"', '', m.group(1))
    if 'atc' in opts:
        head += ' availabilityTimeComplete="false"'
    return head + m.group(2)
if 'atc' in opts or 'noatc' in opts:
    mpd = re.sub(r'(<SegmentTemplate [^>]*?)(/?>)', template, mpd)
sys.stdout.write(mpd)
