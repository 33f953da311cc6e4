"""The tags the musicnn taggers output, in their output order, as label sets name them ("mtt:piano").

Copied from musicnn 0.1.0's configuration.py (MTT_LABELS, MSD_LABELS), so that the label vocabulary
can be checked where musicnn is not installed; the musicnn analyser checks at load that the installed
package lists the same tags in the same order. Spelling and case are upstream's ("msd:Hip-Hop").
"""

from __future__ import annotations

# MagnaTagATune: instruments, voices, some genres and moods.
MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano", "ambient",
    "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals", "no vocals",
    "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft", "sitar", "solo",
    "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello",
    "no voice", "weird", "country", "metal", "female voice", "choral",
)
# Million Song Dataset (last.fm tags): genres, eras, moods.
MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
    "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
    "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock", "ambient",
    "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
    "indie pop", "sad", "House", "happy",
)
# Tag-name prefix -> (the upstream model that outputs them, its tags in output order).
TAGGERS = {"mtt": ("MTT_musicnn", MTT_TAGS), "msd": ("MSD_musicnn", MSD_TAGS)}
ALL_TAGS = tuple(f"{prefix}:{tag}" for prefix, (_, tags) in TAGGERS.items() for tag in tags)
