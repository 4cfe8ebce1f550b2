"""Toy-world variety (`toy.variety`): extra looks of each class, so that K supports need not show what a class is.

In the default world (variety 1) a class is one shape in one material, so five background-removed supports identify
it and a class label adds nothing (docs/maskdiff.md, toy world). With variety v (2 or 3) every object of a class
draws one of v looks: look 0 is the class's own (shape, material); looks 1 and 2 are an extra shape (hexagon,
pentagon, cross, diamond) in an extra colour with one of the four textures. The 32 extra looks are all distinct and
none is a default look, so an object's appearance still decides its class; only which looks a class spans differs.
"""

from __future__ import annotations

from maskforge.eval.folds import TOY_CLASSES

#: Shapes only extra looks use (eval/datasets/toy.py:_shape_mask draws them).
EXTRA_SHAPES: tuple[str, ...] = ("hexagon", "pentagon", "cross", "diamond")
#: Colours only extra looks use (base RGB, as toy.MATERIAL_RGB), each with the texture of the material named second.
EXTRA_COLOURS: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("purple", (130, 50, 170), "red"),
    ("orange", (235, 130, 30), "green"),
    ("cyan", (40, 190, 200), "blue"),
    ("pink", (235, 120, 170), "yellow"),
    ("brown", (120, 70, 35), "green"),
    ("teal", (20, 120, 110), "red"),
    ("white", (235, 235, 230), "blue"),
    ("black", (30, 30, 35), "yellow"),
)
#: The largest toy.variety: the class's own look plus two extra ones (16 classes x 2 = 32 distinct extra looks).
MAX_VARIETY = 1 + len(EXTRA_SHAPES) * len(EXTRA_COLOURS) // len(TOY_CLASSES)


def extra_look(class_id: int, look: int) -> tuple[str, str, tuple[int, int, int]]:
    """Return (shape, texture material, base RGB) of look 1..MAX_VARIETY-1 of a toy class (1-based id).

    Extra look number n = 16 (look - 1) + (class_id - 1) takes shape n mod 4 and colour n div 4: distinct for every
    (class, look) pair.
    """
    if not 1 <= class_id <= len(TOY_CLASSES):
        raise ValueError(f"toy variety: class id {class_id}; expected 1..{len(TOY_CLASSES)}")
    if not 1 <= look < MAX_VARIETY:
        raise ValueError(f"toy variety: look {look}; expected 1..{MAX_VARIETY - 1} (look 0 is the class's own)")
    n = len(TOY_CLASSES) * (look - 1) + class_id - 1
    _, rgb, texture = EXTRA_COLOURS[n // len(EXTRA_SHAPES)]
    return EXTRA_SHAPES[n % len(EXTRA_SHAPES)], texture, rgb


def look_name(class_id: int, look: int) -> str:
    """Return a readable name of a look: the class name for look 0, else e.g. "purple hexagon"."""
    if look == 0:
        return TOY_CLASSES[class_id - 1]
    shape, _, rgb = extra_look(class_id, look)
    colour = next(name for name, value, _ in EXTRA_COLOURS if value == rgb)
    return f"{colour} {shape}"
