"""The BIDS view: ``MNT/.bids/<PROJECT>/`` shows every project as a BIDS dataset (issue 10).

- ``names``    the label rule, the session rule, run numbers, file names (pure)
- ``mapping``  scan -> BIDS kind: a dcm2bids config, XNAT's BIDS map, the heuristic (pure)
- ``sidecar``  the JSON sidecar from one DICOM header, merged with dcm2niix's after conversion
- ``convert``  dcm2niix runs, bounded and single-flight, into a content cache of their own
- ``dataset``  dataset_description.json, README, participants.tsv/json
- ``layout``   the layout class the view engine mounts under ``.bids``

Details and the rules users see: docs/BIDS.md.
"""
