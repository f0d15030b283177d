"""What Harvard-FairVLMed is: every fact about the dataset that the code relies on, in one place.

A module with no imports of its own, so every layer (metrics, losses, data, module, CLI) can read
it. The loader (:mod:`fairvlm_lightning.data.fairvlmed`), the synthetic twin, the module's default
attributes and prompts, the CLI table, the exported model card, the examples and the benchmarks
all take their FairVLMed facts from here.

**Another dataset?** Replace, in this file:

* :data:`ATTRIBUTE_GROUPS` — your protected attributes (in the order you want them reported) and
  the number of groups of each (groups are coded ``0 .. n-1``; ``-1`` means unknown);
* :data:`GROUP_NAMES` — the display names of those group codes;
* :data:`CLASS_PROMPTS` — one zero-shot text prompt per class label ``0, 1, ...``;
* the file-format facts (:data:`IMAGE_FIELD`, :data:`LABEL_FIELD`, :data:`NOTE_FIELD`,
  :data:`SPLIT_FOLDERS`, :data:`NOTES_FILENAMES`) if your files are FairVLMed-like ``.npz``
  files with other field or folder names — otherwise bring your own loader and datamodule.

Example:
    >>> ATTRIBUTES
    ('race', 'gender', 'ethnicity', 'language')
    >>> ATTRIBUTE_GROUPS["race"], GROUP_NAMES["race"]
    (3, ('Asian', 'Black', 'White'))
    >>> all(len(GROUP_NAMES[a]) == n for a, n in ATTRIBUTE_GROUPS.items())
    True
"""

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_GROUPS",
    "BAD_PAIR_FIELD",
    "CLASS_PROMPTS",
    "GROUP_NAMES",
    "IMAGE_FIELD",
    "LABEL_FIELD",
    "META_FOLDER",
    "NOTES_FILENAMES",
    "NOTE_FIELD",
    "OPTIONAL_ATTRIBUTE_GROUPS",
    "SPLIT_FILES_FILENAME",
    "SPLIT_FOLDERS",
    "SPLIT_VALUES",
    "SUMMARY_FILENAME",
    "SYNTHETIC_MARKER",
]

#: Number of groups of each protected attribute (FairVLMed coding; ``-1`` = unknown):
#: race 0 Asian, 1 Black, 2 White; gender 0 female, 1 male; ethnicity 0 non-Hispanic,
#: 1 Hispanic; language 0 English, 1 Spanish, 2 other. The order is the reference code's.
ATTRIBUTE_GROUPS: dict[str, int] = {"race": 3, "gender": 2, "ethnicity": 2, "language": 3}
#: The protected attributes, in the order of the reference code.
ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_GROUPS)
#: Display names of the FairVLMed group codes (``-1`` = unknown is never a group).
GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "race": ("Asian", "Black", "White"),
    "gender": ("Female", "Male"),
    "ethnicity": ("Non-Hispanic", "Hispanic"),
    "language": ("English", "Spanish", "Other"),
    "age_60": ("Under 60", "60 and over"),
    "age_decade": ("Under 40", "40-49", "50-59", "60-69", "70-79", "80 and over"),
    "maritalstatus": ("Married or partnered", "Single", "Divorced", "Widowed", "Separated"),
}
#: Attributes FairVLMed data modules can add on request (``attributes=(..., "age_60")``), with
#: their number of groups: ``age_60`` is FairMedFM's binning of the ``age`` field (0 = under 60,
#: 1 = 60 and over); ``age_decade`` a finer one (0 = under 40, 1 = 40-49, ..., 4 = 70-79,
#: 5 = 80 and over); ``maritalstatus`` the release's coding (0 married or partnered, 1 single,
#: 2 divorced, 3 widowed, 4 legally separated). An age that is missing, NaN or negative, and a
#: marital status of -1, are unknown (``-1``).
OPTIONAL_ATTRIBUTE_GROUPS: dict[str, int] = {"age_60": 2, "age_decade": 6, "maritalstatus": 5}
#: Zero-shot class prompts of the paper's code, indexed by label (0 = no glaucoma, 1 = glaucoma).
CLASS_PROMPTS: tuple[str, ...] = ("A photo of non-glaucoma", "A photo of glaucoma")

#: ``.npz`` field of the image (uint8, H x W, grayscale SLO fundus).
IMAGE_FIELD = "slo_fundus"
#: ``.npz`` field of the binary label.
LABEL_FIELD = "glaucoma"
#: ``.npz`` field of the clinical note (used when no notes CSV is given).
NOTE_FIELD = "note"
#: Optional ``.npz`` field of the synthetic twin: whether the pair was corrupted on purpose.
BAD_PAIR_FIELD = "is_bad_pair"
#: File written last into a complete synthetic-twin folder (by the application's generator);
#: :class:`~fairvlm_lightning.data.FairVLMedDataModule` keeps the Arrow caches of a folder that
#: has it in ``root/".cache"``.
SYNTHETIC_MARKER = ".fairvlm_synthetic.json"
#: Folder names accepted for each split, first match wins (the released data uses ``Testing``).
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("Training",),
    "val": ("Validation",),
    "test": ("Test", "Testing"),
}
#: Accepted spellings of the summarised-notes CSV (the dataset and the reference scripts differ);
#: the first is the default.
NOTES_FILENAMES: tuple[str, ...] = ("gpt-4_summarized_notes.csv", "gpt4_summarized_notes.csv")
#: Sub-folder of the release that holds its CSVs (they may also sit in the root).
META_FOLDER = "ReadMe"
#: The release's per-file table (``filename, age, gender, race, ethnicity, language,
#: maritalstatus, note, gpt4_summary, glaucoma, use``).
SUMMARY_FILENAME = "data_summary.csv"
#: The release's split listing (a file-name column and a ``split`` or ``use`` column).
SPLIT_FILES_FILENAME = "split_files.csv"
#: Values of a ``use`` / ``split`` column accepted for each split (compared in lower case).
SPLIT_VALUES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
