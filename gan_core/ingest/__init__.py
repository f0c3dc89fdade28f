"""Turning raw image files into a dataset a data engineer can trust.

    report.py   Rejected (reason code + detail) and the IngestReport: every rejected file, counts per reason
    policy.py   IngestPolicy: formats, pixel limit, mode/resize/duplicate handling, fail or skip on rejects
    decode.py   one file's bytes -> a validated uint8 array at the target size and channels
    archive.py  zip/tar members read in memory, with path, link, device and size/ratio checks
    readers.py  folders (class sub-folders = labels), archives, .npz, MNIST IDX -> entries
    ingest.py   entries -> images, labels, class names and the report, under the policy
    captioned.py  images + captions.jsonl or per-image .txt captions, each bad caption rejected with its reason

Pure Python + numpy + Pillow: flows/ adds S3, downloads, DVC and the catalog around it.
"""
