"""Loading, validation, atomic writes and the RAS/LPS round trip."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_affine
from gdlesion.errors import GdLesionError, InputError, OutputError
from gdlesion.io import (
    Volume,
    atomic_path,
    ensure_writable_dir,
    from_sitk,
    load_labels,
    load_mask,
    load_volume,
    matrix_from_sitk_transform,
    ras_to_lps,
    save_volume,
    sitk_transform_from_matrix,
    to_sitk,
    write_json_atomic,
)


def _good(shape, rng):
    return rng.normal(100, 10, size=shape).astype(np.float32)


def test_load_keeps_data_and_affine(write_nifti, rng, affine_oblique, shape_unequal):
    data = _good(shape_unequal, rng)
    path = write_nifti(data, affine_oblique, name="pre.nii.gz")
    vol = load_volume(path, role="pre-contrast scan")
    assert vol.shape == shape_unequal
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine_oblique, atol=1e-5)
    assert vol.name == "pre.nii.gz"


def test_uncompressed_nii_and_single_volume_4d_squeezed(write_nifti, rng):
    data = _good((6, 7, 8), rng)
    path = write_nifti(data[..., None], np.eye(4), name="one.nii")
    vol = load_volume(path)
    assert vol.shape == (6, 7, 8)
    np.testing.assert_array_equal(vol.data, data)


@pytest.mark.parametrize("axcodes", [("L", "A", "S"), ("R", "P", "I"), ("A", "S", "L")])
def test_any_orientation_keeps_world_coordinates(write_nifti, rng, axcodes):
    """A voxel's world position must not depend on how the array is stored."""
    data = _good((6, 7, 8), rng)
    base = oblique_affine(zooms=(1.0, 1.2, 2.0))
    img = nib.Nifti1Image(data, base)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(base), nib.orientations.axcodes2ornt(axcodes)
    )
    moved = img.as_reoriented(ornt)
    path = write_nifti(np.asarray(moved.dataobj), moved.affine, name="reo.nii.gz")
    vol = load_volume(path)
    # the voxel holding the maximum sits at the same world point in both storages
    src = np.unravel_index(np.argmax(data), data.shape)
    dst = np.unravel_index(np.argmax(vol.data), vol.shape)
    np.testing.assert_allclose(
        nib.affines.apply_affine(base, src), vol.voxel_to_world(np.array(dst)), atol=1e-4
    )


def test_qform_only_image_is_used(tmp_path, rng, affine_oblique):
    img = nib.Nifti1Image(_good((5, 6, 7), rng), None)
    img.set_qform(affine_oblique, code=1)
    img.set_sform(None, code=0)
    path = tmp_path / "qform.nii.gz"
    nib.save(img, str(path))
    vol = load_volume(path)
    np.testing.assert_allclose(vol.affine, affine_oblique, atol=1e-4)


# --- bad inputs -----------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"pre-contrast scan .*missing\.nii\.gz: file not found"):
        load_volume(tmp_path / "missing.nii.gz", role="pre-contrast scan")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.nii\.gz: empty file"):
        load_volume(p)


def test_truncated_gz(write_nifti, rng, tmp_path):
    path = write_nifti(_good((20, 20, 20), rng), name="full.nii.gz")
    raw = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: (truncated or corrupt|not a readable)"):
        load_volume(cut)


@pytest.mark.parametrize(
    "variant", ["two_members", "zero_padding", "trailing_text", "no_trailer", "bad_crc"]
)
def test_unusual_gzip_streams_load_as_nibabel_reads_them(write_nifti, rng, tmp_path, variant):
    data = (_good((9, 8, 7), rng) * 3).astype(np.int16)
    path = write_nifti(data, name="src.nii.gz", dtype=np.int16)
    raw = path.read_bytes()
    plain = gzip.decompress(raw)
    blob = {
        "two_members": gzip.compress(plain[:500]) + gzip.compress(plain[500:]),
        "zero_padding": raw + bytes(64),
        "trailing_text": raw + b"junk",
        "no_trailer": raw[:-3],
        "bad_crc": raw[:-8] + bytes(4) + raw[-4:],
    }[variant]
    odd = tmp_path / "odd.nii.gz"
    odd.write_bytes(blob)
    expected = nib.load(str(odd)).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(load_volume(odd).data, expected)


def test_gz_name_but_not_gzip(write_nifti, rng, tmp_path):
    path = write_nifti(_good((5, 5, 5), rng), name="plain.nii")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(path.read_bytes())
    with pytest.raises(InputError, match=r"fake\.nii\.gz: named \.gz but not gzip"):
        load_volume(fake)


def test_not_a_nifti(tmp_path):
    p = tmp_path / "notes.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"this is not an image" * 40)
    with pytest.raises(InputError, match=r"notes\.nii\.gz: not a readable NIfTI"):
        load_volume(p)


def test_wrong_extension(tmp_path):
    p = tmp_path / "scan.png"
    p.write_bytes(b"\x89PNG....")
    with pytest.raises(InputError, match=r"scan\.png: not a NIfTI file name"):
        load_volume(p)


def test_2d_image(write_nifti, rng):
    path = write_nifti(rng.normal(size=(10, 12)), name="flat.nii.gz")
    with pytest.raises(InputError, match=r"flat\.nii\.gz: image is 2-D"):
        load_volume(path)


def test_real_4d_image(write_nifti, rng):
    path = write_nifti(rng.normal(size=(6, 7, 8, 3)), name="dyn.nii.gz")
    with pytest.raises(InputError, match=r"dyn\.nii\.gz: image is 4-D \(6, 7, 8, 3\); pass a"):
        load_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(write_nifti, rng, bad):
    data = _good((6, 7, 8), rng)
    data[1, 2, 3] = bad
    data[4, 4, 4] = bad
    path = write_nifti(data, name="nan.nii.gz")
    with pytest.raises(InputError, match=r"nan\.nii\.gz: 2 voxels are NaN or inf"):
        load_volume(path)


def test_complex_image(write_nifti, rng):
    """nibabel would silently drop the imaginary part of complex (phase) data."""
    data = _good((6, 7, 8), rng) + 1j * _good((6, 7, 8), rng)
    path = write_nifti(data, name="cplx.nii.gz", dtype=np.complex64)
    with pytest.raises(InputError, match=r"cplx\.nii\.gz: voxel type complex64 is not a real"):
        load_volume(path)


def test_rgb_image(tmp_path):
    rgb = np.zeros((6, 7, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = np.arange(rgb.size, dtype=np.uint8).reshape(rgb.shape)
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    with pytest.raises(InputError, match=r"rgb\.nii\.gz: voxel type .* is not a real scalar"):
        load_volume(path)


def test_constant_image(write_nifti):
    path = write_nifti(np.full((6, 7, 8), 3.0), name="flat3d.nii.gz")
    with pytest.raises(InputError, match=r"flat3d\.nii\.gz: all voxels have the same value \(3\)"):
        load_volume(path)


@pytest.mark.parametrize(
    ("zooms", "pattern"),
    [
        ((1.0, 1.0, 0.0), "zero or negative"),
        ((1.0, 25.0, 1.0), "implausible"),
        ((0.01, 1.0, 1.0), "implausible"),
    ],
)
def test_absurd_voxel_sizes(tmp_path, rng, zooms, pattern):
    img = nib.Nifti1Image(_good((6, 7, 8), rng), np.eye(4))
    img.header.set_zooms(zooms)
    img.set_sform(np.diag([*zooms, 1.0]), code=1)
    path = tmp_path / "vox.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(InputError, match=rf"vox\.nii\.gz: .*voxel size .* {pattern}"):
        load_volume(path)


@pytest.mark.parametrize("edge", [0.05, 20.0])
def test_voxel_size_bounds_are_inclusive(write_nifti, rng, edge):
    path = write_nifti(_good((4, 5, 6), rng), np.diag([edge, 1.0, 1.0, 1.0]), name="edge.nii.gz")
    assert load_volume(path).zooms[0] == pytest.approx(edge)


def test_singular_affine(tmp_path, rng):
    aff = np.eye(4)
    aff[:3, 2] = aff[:3, 0] + aff[:3, 1]  # third axis = sum of the first two: rank 2
    img = nib.Nifti1Image(_good((6, 7, 8), rng), np.eye(4))
    img.set_sform(aff, code=1)
    path = tmp_path / "sing.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(InputError, match=r"sing\.nii\.gz: affine is singular"):
        load_volume(path)


def test_errors_are_value_errors():
    assert issubclass(InputError, GdLesionError)
    assert issubclass(GdLesionError, ValueError)


def test_load_mask_grid_checks(write_nifti, rng):
    ref = Volume(_good((6, 7, 8), rng), np.eye(4), "post")
    good = write_nifti((rng.random((6, 7, 8)) > 0.5).astype(np.uint8), np.eye(4), name="m.nii.gz")
    assert load_mask(good, reference=ref).dtype == bool
    other = write_nifti(np.ones((6, 7, 9)), np.eye(4), name="m2.nii.gz")
    with pytest.raises(InputError, match=r"m2\.nii\.gz: shape \(6, 7, 9\) differs"):
        load_mask(other, reference=ref)
    empty = write_nifti(np.zeros((6, 7, 8)), np.eye(4), name="m3.nii.gz")
    with pytest.raises(InputError, match=r"m3\.nii\.gz: mask is empty"):
        load_mask(empty, reference=ref)


# --- writing --------------------------------------------------------------------------


def test_save_volume_round_trip_and_no_header_text(tmp_path, rng, affine_oblique):
    data = (rng.random((7, 8, 9)) * 5).astype(np.int32)
    out = save_volume(tmp_path / "labels.nii.gz", data, affine_oblique, dtype=np.int16)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, affine_oblique, atol=1e-5)
    assert img.header["descrip"].tobytes().rstrip(b"\x00") == b"gdlesion"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_save_volume_writes_the_file_nibabel_writes(tmp_path, rng, affine_oblique, dtype):
    import gzip

    data = (rng.normal(size=(7, 8, 9)) * 50).astype(dtype)
    path = save_volume(tmp_path / "fast.nii.gz", data, affine_oblique, dtype=dtype)
    img = nib.Nifti1Image(data, affine_oblique)
    img.header.set_data_dtype(data.dtype)
    img.set_sform(affine_oblique, code=1)
    img.set_qform(affine_oblique, code=1)
    img.header["descrip"] = b"gdlesion"
    nib.save(img, str(tmp_path / "nibabel.nii.gz"))
    # the same NIfTI bytes inside a standard gzip stream (Python's gzip checks the CRC and size)
    ours = gzip.decompress(path.read_bytes())
    assert ours == gzip.decompress((tmp_path / "nibabel.nii.gz").read_bytes())
    assert path.read_bytes()[:10] == (tmp_path / "nibabel.nii.gz").read_bytes()[:10]
    # deterministic: the same volume gives the same file
    again = save_volume(tmp_path / "again.nii.gz", data, affine_oblique, dtype=dtype)
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.float32, ">f8"])
def test_fortran_order_bytes_are_numpys(rng, dtype):
    from gdlesion.io import _fortran_order_bytes

    # C- and F-ordered, strided and transposed views, other dimensions, an empty array
    base = (rng.normal(size=(37, 11, 45)) * 50).astype(dtype)
    cases = [
        base, np.asfortranarray(base), base[::2, :, 3:], base.transpose(1, 0, 2),
        np.ascontiguousarray(base[:, :, :1]), base[:, 0, :], base.reshape(37, 11, 5, 9),
        base[:0], np.ascontiguousarray(base[:16, :5, :32]),
    ]
    for data in cases:
        buf = _fortran_order_bytes(data)
        assert bytes(buf) == data.tobytes(order="F"), (data.shape, data.strides)
        assert buf.nbytes == data.nbytes


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_json_is_reproducible(tmp_path):
    a = write_json_atomic(tmp_path / "a.json", {"b": np.float32(1.5), "a": np.arange(3)})
    b = write_json_atomic(tmp_path / "b.json", {"a": [0, 1, 2], "b": 1.5})
    assert a.read_bytes() == b.read_bytes()


def test_ensure_writable_dir(tmp_path):
    out = tmp_path / "out"
    assert ensure_writable_dir(out, overwrite=False) == out
    out.mkdir()
    (out / "x").write_text("user data")
    with pytest.raises(OutputError, match=r"out: directory is not empty; .*--overwrite"):
        ensure_writable_dir(out, overwrite=False)
    with pytest.raises(OutputError, match=r"contains the input"):
        ensure_writable_dir(out, overwrite=True, inputs=(out / "x",))
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(OutputError, match=r"not a directory"):
        ensure_writable_dir(f, overwrite=True)


# --- RAS (nibabel) <-> LPS (SimpleITK) -------------------------------------------------


def test_ras_lps_round_trip_oblique_unequal(rng, affine_oblique, shape_unequal):
    data = _good(shape_unequal, rng)
    vol = Volume(data, affine_oblique, "x")
    img = to_sitk(vol)
    assert img.GetSize() == shape_unequal  # SimpleITK index (x, y, z) = nibabel (i, j, k)
    for ijk in [(0, 0, 0), (6, 7, 8), (3, 1, 5), (6, 0, 2)]:
        ras = nib.affines.apply_affine(affine_oblique, ijk)
        lps = np.asarray(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)))
        np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-9)
        # the same voxel value is found at that point in SimpleITK's array ([k, j, i])
        arr = sitk.GetArrayViewFromImage(img)
        assert arr[ijk[2], ijk[1], ijk[0]] == data[ijk]
    back = from_sitk(img, name="x")
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine_oblique, atol=1e-9)


def test_transform_matrix_round_trip(rng):
    tx = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, -6.0))
    m = matrix_from_sitk_transform(tx)
    p_ras = rng.normal(0, 50, size=3)
    p_lps = p_ras * [-1, -1, 1]
    q_lps = np.asarray(tx.TransformPoint(tuple(p_lps)))
    np.testing.assert_allclose(m[:3, :3] @ p_ras + m[:3, 3], q_lps * [-1, -1, 1], atol=1e-9)
    back = sitk_transform_from_matrix(m)
    np.testing.assert_allclose(back.TransformPoint(tuple(p_lps)), q_lps, atol=1e-9)
    np.testing.assert_allclose(ras_to_lps(ras_to_lps(m)), m)


def test_load_labels_accepts_empty_map_and_checks_grid(write_nifti, rng):
    ref = Volume(_good((6, 7, 8), rng), np.eye(4), "post")
    empty = write_nifti(np.zeros((6, 7, 8)), np.eye(4), name="lab.nii.gz", dtype=np.int16)
    lab = load_labels(empty, reference=ref)
    assert lab.data.dtype == np.int32 and not lab.data.any()
    other = write_nifti(np.zeros((6, 7, 9)), np.eye(4), name="lab2.nii.gz", dtype=np.int16)
    with pytest.raises(InputError, match=r"lab2\.nii\.gz: shape \(6, 7, 9\) differs"):
        load_labels(other, reference=ref)


def test_written_files_are_not_private(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "s.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
