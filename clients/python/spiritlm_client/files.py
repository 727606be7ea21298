"""Writing received audio to files."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

FORMATS = ("wav", "mp3", "flac", "opus", "aac", "pcm")
_UNKNOWN_SIZE = b"\xff\xff\xff\xff"


def format_for(path: str | None, given: str | None, default: str = "wav") -> str:
    """The audio format to ask for: --format, else the output file's suffix, else `default`."""
    if given:
        return given
    suffix = Path(path).suffix.lstrip(".").lower() if path and path != "-" else ""
    if suffix == "ogg":
        return "opus"
    return suffix if suffix in FORMATS else default


def finalize_wav(path: Path) -> None:
    """Write the real sizes into a streamed WAV's 44-byte header ("unknown size" 0xFFFFFFFF).

    Streamed WAV is written before its length is known; most players cope, but some tools
    trust the header. The saved file is seekable, so the sizes can be fixed afterwards.
    """
    size = path.stat().st_size
    with path.open("r+b") as file:
        head = file.read(44)
        if len(head) < 44 or head[:4] != b"RIFF" or head[36:40] != b"data":
            return
        if head[4:8] != _UNKNOWN_SIZE and head[40:44] != _UNKNOWN_SIZE:
            return
        file.seek(4)
        file.write(struct.pack("<I", size - 8))
        file.seek(40)
        file.write(struct.pack("<I", size - 44))


def write_pcm16_wav(path: Path, pcm: bytes, sample_rate: int) -> float:
    """Raw 16-bit mono samples as a WAV file; returns its duration in seconds."""
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm)
    return len(pcm) / 2 / sample_rate


def wav_seconds(data: bytes) -> float | None:
    """Duration of a 16-bit PCM WAV held in memory, when its header says."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[36:40] != b"data":
        return None
    rate = struct.unpack("<I", data[24:28])[0]
    block = struct.unpack("<H", data[32:34])[0]
    return (len(data) - 44) / block / rate if rate and block else None
