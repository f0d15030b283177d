"""What Harvard-FairVLMed is, for display: the protected attributes' group names.

A module with no imports of its own, so every layer can read it. It holds, for now, the display
names of the group codes that the CLI table and the exported model card print; the other
FairVLMed facts (attribute list, group counts, prompts) still live beside their users.

Example:
    >>> GROUP_NAMES["race"]
    ('Asian', 'Black', 'White')
"""

__all__ = ["GROUP_NAMES"]

#: Display names of the FairVLMed group codes (``-1`` = unknown is never a group).
GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "race": ("Asian", "Black", "White"),
    "gender": ("Female", "Male"),
    "ethnicity": ("Non-Hispanic", "Hispanic"),
    "language": ("English", "Spanish", "Other"),
}
