"""Helpers shared by the tests."""


def write_dataset(root, name, image, label, voxel_size_nm, split="train"):
    """A dataset in the shared data layout (``../shared/data/README.md``): PNG slices + meta.json."""
    import json

    from PIL import Image

    d = root / name
    for sub, vol in (("image", image), ("label", label)):
        (d / split / sub).mkdir(parents=True, exist_ok=True)
        for z, sl in enumerate(vol):
            Image.fromarray(sl).save(d / split / sub / f"{z:04d}.png")
    (d / "meta.json").write_text(json.dumps({"voxel_size_nm_zyx": list(voxel_size_nm),
                                             "splits": {split: {"shape_zyx": list(image.shape)}}}))
    return d
