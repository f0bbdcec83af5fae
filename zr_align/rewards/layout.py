"""How a reward model's token sequences are laid out: one per (image, dimension), or one per image.

- `per_dimension` (the default, and what a stock VLM understands zero-shot): the rubric template is rendered
  once per dimension and each row ends at that dimension's score slot. `D` sequences per image.
- `joint`: one sequence per image carries every dimension in turn, after a short prefix (the image and the
  prompt): `prefix | dim_1 [rationale_1] marker <slot> | dim_2 [rationale_2] marker <slot> | ...`. The score of
  dimension `d` is read at the last marker token of its segment; the next token in the sequence is the next
  dimension's header, never a score token, so a student reads all `D` distributions in one forward pass, with
  the image encoded once (`D` times cheaper in training and inside fine-tuning), and a teacher writes its
  rationales one dimension after another.

[`assemble`] builds the rows of either layout from token ids and records, for every (row, segment), where its
rationale starts, how long it is and where its score slot is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAYOUTS: tuple[str, ...] = ("per_dimension", "joint")


@dataclass
class Assembled:
    """Right-padded rows and, per (row, segment) in row-major order, the positions of its parts.

    Args:
        input_ids, attention_mask: `(R, W)`.
        starts: `(R, S)` position of the first rationale token (or where it would be when empty).
        lengths: `(R, S)` rationale lengths.
        slots: `(R, S)` position of the score slot: the segment's last token (its marker's last token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    slots: torch.Tensor


def assemble(prefixes: list[list[int]], headers: list[list[int]], marker: list[int],
             rationales: list[list[list[int]]] | None, pad_id: int, device=None) -> Assembled:
    """Rows `prefix + sum_s (headers[s] + rationales[row][s] + marker)`, right-padded with `pad_id`.

    Args:
        prefixes: one token list per row.
        headers: one token list per segment (`S` segments; `[[]]` for one segment without a header).
        marker: the tokens that end every segment (empty: the slot is the segment's last header or prefix token).
        rationales: `rationales[row][s]` token lists, or None for none (a student).
    """
    rows, starts, lengths, slots = [], [], [], []
    for r, prefix in enumerate(prefixes):
        row = list(prefix)
        row_starts, row_lengths, row_slots = [], [], []
        for s, header in enumerate(headers):
            row += header
            rationale = rationales[r][s] if rationales is not None else []
            row_starts.append(len(row))
            row_lengths.append(len(rationale))
            row += list(rationale) + list(marker)
            row_slots.append(len(row) - 1)
        rows.append(row)
        starts.append(row_starts)
        lengths.append(row_lengths)
        slots.append(row_slots)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return Assembled(input_ids.to(device), attention.to(device), as_tensor(starts), as_tensor(lengths),
                     as_tensor(slots))


__all__ = ["Assembled", "LAYOUTS", "assemble"]
