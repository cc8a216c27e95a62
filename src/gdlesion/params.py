"""Detection parameters and the named pipeline presets.

The packaged JSON files in ``gdlesion/presets/`` are the single source of
truth for the presets (``default``, ``clinical-2d``, ``high-sensitivity``);
``pipelines/`` at the repository root documents them and links to them. A
preset file holds a subset of :class:`DetectionParams` fields; missing fields
keep their defaults, unknown fields are an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = [
    "DetectionParams", "load_params", "preset_names", "auto_preset", "AUTO",
]


@dataclass(frozen=True)
class DetectionParams:
    """Every number that decides what is reported as an enhancing lesion.

    All thresholds are inclusive (``>=``) unless stated otherwise.

    Parameters
    ----------
    smoothing_mm : float
        Gaussian sigma (mm) applied to the post - pre residual. 0.8 mm averages
        about 8 voxels at 1 mm, raising the signal-to-noise of a 3 mm lesion
        while keeping it compact.
    high_threshold : float
        Seed level in robust noise units: a candidate needs one voxel with
        ``z >= high_threshold``. 6 noise units make pure-noise seeds
        practically impossible in a million-voxel brain (Gaussian tail ~1e-9).
    low_threshold : float
        Growing level: the candidate is the 26-connected region of
        ``z >= low_threshold`` around its seeds (3 noise units ~ the 0.1 %
        tail, which traces the lesion border without leaking into noise).
    min_extent_resels : float
        A region of ``z >= low_threshold`` at least this large is a candidate
        even without a seed: faint but extended enhancement (a large lesion
        enhancing by a few noise units) is not noise, whose clusters above the
        growing level are about one resolution element. The unit is the
        resel, the product over axes of ``max(FWHM of the smoothing, voxel
        edge)``: 8 resels are 53 mm3 (a 4.7 mm sphere) at 1 mm and 156 mm3 on
        0.9x0.9x5.5 mm slices.
    blob_seed_threshold, blob_seed_ratio : float
        A region of ``z >= low_threshold`` whose peak reaches only
        ``blob_seed_threshold`` (4 noise units) is still a candidate when the
        enhancement at that peak is a near-isotropic blob: its Hessian blob
        ratio (:func:`gdlesion.blob.peak_blob_ratio`, 1 for a ball, 0.4 for a
        2:1 ovoid, ~0 for a tube or an edge) is at least ``blob_seed_ratio``
        (0.7). The pre/post residual of real scans is structured (vessels,
        misregistration and sequence-contrast edges), so sub-threshold peaks
        are mostly tubes and plates; only a round peak is accepted below the
        seed level. On the three real Lesjak pairs, 4.0 and 3.5 / 0.7 and 0.8
        give the same result (two more inserted lesions found, no extra
        detection on the unmodified scans); 0.5-0.6 adds detections on the
        unmodified scans. ``blob_seed_threshold >= high_threshold`` disables it;
        skipped on grids coarser than :data:`gdlesion.blob.MAX_VOXEL_MM`.
    misregistration_mm : float
        Residual misalignment allowed at edges (mm): the noise at a voxel is
        ``sqrt(sigma**2 + (misregistration_mm * |grad pre|)**2)``. 0.5 mm is
        half a voxel, the typical error of a good rigid registration.
    shift_tolerance_mm : float
        Shift-tolerant residual (0 = off, the default): each smoothed post voxel
        is compared with the *brightest* smoothed pre voxel within this radius
        (a grey dilation of the registered pre scan by a ball), so a structure
        that is in the pre scan but displaced by up to this distance leaves no
        residual, while enhancement absent from the pre scan keeps its amplitude
        (less the pre scan's own variation within the radius: a T1-dark lesion
        loses a little at its rim). ``clinical-2d`` uses 1.0 mm with
        ``misregistration_mm`` 0 (the shift replaces the gradient allowance): a
        pre scan resampled across moved 5.5 mm slices leaves edges that no
        rigid matrix removes. On 60 simulated 2-D heads without FLAIR (seeds
        1000-1039, 1000-1019 with zeroed air) false detections 24 -> 9 and
        lesions >= 3 mm found 223 instead of 224 of 282; on the four
        ``sample_data`` sessions two faint lesions are lost (5.8 mm enhancing
        by 27 %, 2.8 mm) and one false detection is added. On 1 mm Lesjak
        pairs it adds detections (0.67 -> 1.33 per unmodified scan) and is
        off.
    noise_guide_mm : float
        Noise is estimated per tissue intensity: the robust spread of the
        enhancement map is measured in 32 equal-count bins of the registered
        pre scan (smoothed by this Gaussian sigma in mm, so that a lesion's own
        T1 darkening does not move it to another bin) and each voxel is
        divided by the spread of its bin. The pre/post residual of real scans
        is twice as noisy in grey matter and at partial-volume edges (different
        sequence contrast, cortical vessels) as in white matter: on the three
        Lesjak pairs the white-matter spread is 0.47-0.6 of the brain-wide one,
        so a single brain-wide sigma hides white-matter lesions enhancing by
        20-30 %. 2 mm keeps a 3 mm lesion in its surroundings' bin (the
        default); 0 uses one brain-wide sigma (the ``clinical-2d`` preset). On
        its own, without FLAIR, it also lifts the structured residual of the
        posterior fossa and deep grey matter above the seed level (Lesjak pairs:
        20/24 instead of 16/24 inserted lesions found, but 7.3 instead of 2.7
        false positives per scan); the default preset therefore pairs it with
        stricter conspicuity and strength rules (``min_conspicuity`` 3,
        ``min_conspicuity_elongated`` 4.5, ``min_enhancement_pct`` 25), and the
        ``flair`` preset with the FLAIR rule. See ``benchmarks/README.md``.
    boundary_fraction : float
        Each candidate is trimmed to the voxels whose smoothed enhancement is
        at least this fraction of its own peak: 0.5 is the partial-volume
        midpoint of a uniformly enhancing lesion, which makes volumes unbiased
        (0 keeps the whole hysteresis region).
    part_peak_fraction : float
        With that trimming, a part of a candidate more than ~3 mm from its
        peak is measured against its own local peak, so that the weaker side
        of a ring keeps its outline. A part whose local peak is below this
        fraction of the candidate's highest peak is dropped: a faint structure
        that the growing level followed out of a bright lesion (a vein, a
        partial-volume rim), which made the lesion a branching "vessel" and
        overstated its volume. 0.2: on the benchmark cases (simulated 1 mm and
        2-D heads, Lesjak pairs with inserted balls, five seeds, and ovoids) a
        3.7 mm lesion enhancing by 86 % is found that a 120-voxel faint trail
        had turned into a branching vessel, Dice rises on five simulated 1 mm
        heads (0.67 -> 0.90 on one) and one 2-D head, and no other detection
        changes. 0.1 gives the same detections on every set, 0.3 on the two
        sets tried; 0.4 starts to shrink the TCGA glioma (Dice 0.64 -> 0.63).
        0 keeps every part.
    regrow_radius_mm : float
        A candidate smaller than ``min_volume_mm3`` whose peak is a round blob
        reaching the blob seed level (``blob_seed_threshold``,
        ``blob_seed_ratio``) is regrown to its half-maximum outline, up to this
        distance (mm) from its peak (:func:`gdlesion.segment.regrow_small`): a
        faint 3 mm lesion, or one that is T1-hypointense on the pre scan, keeps
        only a few voxels above the growing level. 4 mm holds a 7-8 mm focus.
        Measured on the benchmark cases (simulated 1 mm and 2-D heads, Lesjak
        pairs with inserted balls, and again with other seeds and ovoids):
        4 more of 204 lesions of 3 mm or more found, no other detection
        changed (same false positives, same detections on the unmodified
        pairs). 0 disables it.
    min_volume_mm3 : float
        Smallest reported lesion (inclusive). A 3 mm sphere is 14 mm3, but
        the half-maximum boundary of a faint 3 mm lesion can hold only 6-8
        voxels at 1 mm; 6 mm3 keeps them. Measured on the Lesjak pairs with
        inserted lesions: 10 -> 6 mm3 finds two more 3 mm lesions (16 -> 18 of
        24) with the same false positives (2.0 per scan) and the same
        detections on the unmodified pairs.
    min_enhancement_pct : float
        Smallest reported peak enhancement, % of normal-appearing white matter
        (inclusive; :func:`gdlesion.rules.faint`). 25 by default, 20 in the
        ``flair`` preset, 0 (off) in ``clinical-2d``: with per-tissue noise
        (``noise_guide_mm``) statistically significant but faint enhancement
        reaches the seed level; every lesion planted with 20-60 % enhancement
        in the Lesjak pairs that is found peaks at 26 % or more.
    min_enhancement_pct_nodule : float
        The level for a compact nodule whose peak is round enough
        (``blob_ratio >= elongated_blob_ratio``) and strongly significant
        (``max_z >= round_min_z``): 20 (the ``flair`` preset's level) instead
        of 25, so that a faint small lesion (simulated at 15-25 %) is kept
        (:func:`gdlesion.rules.faint`). At or above ``min_enhancement_pct`` it
        changes nothing (every preset but the default).
    split_saddle_ratio : float
        Touching foci are split when the enhancement between two peaks falls
        below this fraction of the lower peak (0 disables splitting).
    vessel_elongation : float
        Candidates at least this elongated (ratio of the longest to the second
        principal axis) are vessels. Enhancing MS lesions are ovoid (axis
        ratio rarely above 2); veins and sinuses are tubes.
    vessel_min_length_mm : float
        The vessel rule applies only to candidates whose longest axis is at
        least this long: a short blob's axis ratio is dominated by voxel shape.
    vessel_max_thickness_mm, vessel_min_compactness : float
        A non-ring candidate at most this thick (mm, largest inscribed ball
        diameter) whose volume is at least this many such balls is a curved or
        branching vessel (see :func:`gdlesion.rules.vessel`).
    vessel_max_blob_ratio : float
        A non-ring candidate whose peak has a Hessian blob ratio at most this
        (inclusive) is a tube or an edge, not a nodule (see
        :func:`gdlesion.rules.vessel`). 0.3 is halfway between a 2:1 ovoid
        (0.4, the most elongated common MS lesion shape) and a 3:1 tube (0.2,
        the ``vessel_elongation`` limit). 0 disables the rule. On thick
        slices split for the analysis it reads the ratio with the slice's
        spread removed (``slice_blob_ratio``).
    vessel_blob_exempt : float
        A candidate whose peak has a blob ratio at least this (inclusive) is
        not taken by the branching-vessel part of the rule: its peak is a
        round nodule (0.6: axis ratio below about 1.5:1), with a vein or an
        open ring rim attached, not a vein (whose peak is a tube, near 0).
        0 disables the exemption.
    vessel_min_enhancement_pct : float
        A non-ring candidate whose peak is not round (``blob_ratio <
        vessel_blob_exempt``) and enhances by at least this much (percent of
        normal-appearing white matter, inclusive) is a vessel: blood-pool
        enhancement, far above what an MS lesion's leaky barrier gives
        (:func:`gdlesion.rules.vessel`, part (d)). 150 by default; 0
        disables it (e.g. for triple-dose or late post-contrast scans, where
        lesions enhance more).
    ring_max_outline_compactness : float
        Ring candidates are exempt from the vessel parts (b)-(d) (a ring
        lesion is a thin shell), unless their ``outline_compactness`` (the
        compactness with the enclosed core filled) is at least this: a ring
        lesion filled in is a ball or an ovoid (planted rings found on five
        Lesjak sets: 1.0-1.4, up to 6.2 when joined to a neighbour), while a
        sheet or a loop of vessels with holes stays thin when filled (large
        faint "rings" reported with FLAIR on simulated heads: 21-36). 15 by
        default; 0 keeps every ring exempt (``clinical-2d``, not measured on
        thick slices). Measured with the ``flair`` preset on 120 simulated
        1 mm heads (1040-1159): false detections 46 -> 27, the same 557 of
        576 lesions found; 10 lost a faint 14 mm nodule whose candidate had
        holes (outline 11.2) on one head, so 15 was chosen and then checked
        on heads 1120-1159 (false detections 19 -> 12, no lesion changed). No change on the default
        preset's heads, the Lesjak sets or the standard benchmark
        (``benchmarks/README.md``, nineteenth session).
    vessel_carve_mm : float
        A candidate rejected as a vessel is opened by a ball of this radius
        (:func:`gdlesion.blob.carve_thick_cores`): its parts at least twice as
        thick (a lesion's body) become candidates of their own and are judged
        again, so that a lesion touching an enhancing vein is not discarded
        with it. 2 mm keeps lesions of 4-5 mm and more and removes veins up to
        4 mm calibre (the default and ``flair``; 0 disables it, as in
        ``clinical-2d``). Only vessels thicker than the ball are examined.
        Measured alone with the old default rules (one noise level,
        conspicuity 2), the thick pieces of real veins passed as nodules
        (Lesjak pairs: one more inserted lesion found, 0.7 more false
        positives per scan); with the current default rules it finds 2 more
        of 38 lesions and 2 more of 24 planted ovoids with the same false
        positives, and 1 more of 37 for one more false detection on a third
        set (``benchmarks/README.md``).
    vessel_split_blob_ratio, vessel_split_min_z : float
        In a candidate rejected as a vessel, each local maximum of the
        enhancement with ``z >= vessel_split_min_z`` whose blob ratio is at
        least ``vessel_split_blob_ratio`` is cut out (its watershed basin, at
        half its peak: :func:`gdlesion.blob.split_round_peaks`) and judged as a
        candidate of its own, its conspicuity measured without the vein it was
        cut from. A lesion beside a vein brighter than itself, too thin to be
        carved out, keeps its own round peak; a vein's local maxima are tubes.
        0.6 is the rules' "round peak" (``vessel_blob_exempt``); ``z >= 12``
        (twice the seed level: part of the peak can be the vein's blurred
        flank). Measured on simulated 1 mm heads (default preset): lesions of
        3 mm or more 146 -> 148/156 (1104-1135, where the misses were seen),
        136 -> 137/145 (1168-1199, held out), 137/146 unchanged (1136-1167);
        false detections unchanged (1 per set); the standard benchmark, the
        Lesjak pairs with planted lesions (seeds 0, 3, 6 and ovoids) and the
        unmodified pairs unchanged. With ``z >= 8`` a round vein piece on a
        Lesjak pair (z 10) became a false detection in every planted set. 0
        disables it (``clinical-2d``: the blob ratio there is in-plane, and a
        vein crossing the slice is round).
    min_conspicuity : float
        A candidate whose peak is less than this many times the 95th
        percentile of the enhancement within 2-12 mm around it is texture, not
        a focal lesion (:func:`gdlesion.rules.inconspicuous`). 3 by default
        (with per-tissue noise the white-matter texture reaches the seed level
        and needs the stricter contrast), 2 in the ``flair`` preset, where the
        FLAIR rule removes that texture. 0 disables it.
    min_conspicuity_elongated, elongated_blob_ratio : float
        A non-ring candidate whose enhancement peak is not round (``blob_ratio
        < elongated_blob_ratio``, 0.6: axis ratio above about 1.5:1) needs a
        conspicuity of at least ``min_conspicuity_elongated`` (4.5 by default)
        instead of ``min_conspicuity`` (:func:`gdlesion.rules.inconspicuous`).
        0 disables it (``flair`` and ``clinical-2d`` presets).
    min_conspicuity_round, round_blob_ratio, round_min_z : float
        A non-ring candidate whose peak is a round ball (``blob_ratio >=
        round_blob_ratio``, 0.7) and strongly significant (``max_z >=
        round_min_z``, 6 noise units; 8 until the eighteenth session, see
        ``benchmarks/README.md``) needs a conspicuity of only
        ``min_conspicuity_round`` (2, the ``flair`` preset's value): a round
        nodule beside a vein stands out less from its surroundings than
        from the brain, and what the stricter conspicuity removes (texture,
        vessel cross-sections) is not round. 0 disables it (``clinical-2d``).
        ``round_min_z`` is also the "strongly significant" level of the
        ``faint`` nodule limit and of the CSF-space and plexus exemptions.
        6 instead of 8, measured (default and ``flair`` presets): on the
        Lesjak pairs with lesions planted by seed 6, two more of 24 found
        without FLAIR (a 3 mm round nodule peaking at z 7.1, a 6 mm nodule
        enhancing by 24 % at z 7.7); no other change on seeds 0, 3, 9 and
        12, planted ovoids, lesions blurred by 1-2 mm, 12 simulated 1 mm
        heads, the standard benchmark and the unmodified pairs (the round
        foci a lower level would admit there peak at z 5.3).
    min_conspicuity_ring : float
        A ring candidate (``pattern`` "ring": an enhancing rim enclosing a
        core that is not part of it) that is strongly significant (``max_z >=
        round_min_z``) and whose outline is a ball or an ovoid
        (``outline_compactness``, the compactness with the enclosed core
        filled, at most ``round_max_compactness``) needs a conspicuity of only
        ``min_conspicuity_ring`` (2, as a round peak): the ring is itself the
        shape evidence that the stricter conspicuity asks for, and its rim,
        1-3 mm thick, peaks lower than a nodule of the same enhancement. On
        the Lesjak pairs with planted lesions (seeds 0, 3, 6, 9, 12; 120
        lesions of 3 mm or more on 15 scans) and the unmodified pairs, every
        ring candidate rejected as inconspicuous was a planted lesion (three
        8 mm rings, conspicuity 1.8-2.6); with 2, the two of them at z >= 6
        are found (z 6.8 and 7.2, outline compactness 1.2-1.3) and no
        detection is added. Without the outline condition a 1,664 mm3 sheet
        with holes in the posterior fossa of a simulated head (outline
        compactness 56) became a false detection. The planted rings found
        on the Lesjak sets have outlines of 1.0-1.4, or 3.9-6.2 when joined
        to a neighbour (those are conspicuous and do not need the part); the
        non-lesion ring candidates looked at, 12-130. 0 disables it
        (``clinical-2d``, whose round part is off too).
    round_min_volume_mm3, round_max_compactness : float
        A non-ring candidate of at least ``round_min_volume_mm3`` (100 mm3, a
        6 mm ball) whose ``compactness`` is at most ``round_max_compactness``
        (3: a ball is 1, an ovoid lesion 2-3) counts as round for that part
        too, whatever the blob ratio of its peak: the peak of a large faint
        lesion on the structured residual of a real scan is irregular (blob
        ratio 0.55-0.6 for two 10 mm lesions enhancing by 22-24 % planted in
        the Lesjak pairs, conspicuity 2.5-2.7), while its whole shape is a
        ball. The large foci this keeps out of the round part on the Lesjak
        pairs are irregular (compactness 5.2-6.0). 0 disables it.
    edge_margin_mm : float
        Depth below the brain surface counted as "at the edge" (dura, dural
        sinuses, cortical veins in sulci).
    edge_fraction : float
        Candidates with at least this fraction of voxels within
        ``edge_margin_mm`` of the surface are rejected as dura/vessels.
    edge_slice_fraction : float
        On a split grid (thick slices analysed on ~1 mm working slices,
        ``work_voxel_mm``) the edge band is ``max(edge_margin_mm,
        edge_slice_fraction * slice)`` deep
        (:func:`gdlesion.anatomy.edge_margin`). A vessel or dura on the surface
        is averaged over its whole acquired slice and then interpolated onto
        the working slices, so where the surface is oblique to the slices its
        voxels reach about a slice deeper than it lies. 1.0 (5.5 mm for
        5.5 mm slices; unchanged for 3 mm slices). Measured on 40 simulated
        5.5 mm heads and on the Lesjak pairs averaged to 5 mm slices:
        ``benchmarks/README.md`` (twenty-fourth session). 0 keeps
        ``edge_margin_mm``.
    edge_round_blob_ratio, edge_round_conspicuity : float
        A juxtacortical lesion can lie mostly within ``edge_margin_mm`` of the
        surface. Exempt from the brain-edge rule is a candidate whose peak is
        round (``blob_ratio >= edge_round_blob_ratio``, 0.6), that stands out
        (``conspicuity >= edge_round_conspicuity``, 4.5) and that is a nodule
        (``compactness < vessel_min_compactness``) or a ring
        (:func:`gdlesion.rules.brain_edge`). 0 disables it (``clinical-2d``).
    ventricle_margin_mm : float
        Distance from the ventricles counted as "beside" them.
    ventricle_slice_fraction : float
        On a split grid (thick slices analysed on ~1 mm working slices,
        ``work_voxel_mm``), the neighbourhood of the ventricles reaches along
        each split axis at least this fraction of the acquired voxel edge: an
        ellipsoid of semi-axes ``ventricle_margin_mm`` in-plane and
        ``max(ventricle_margin_mm, ventricle_slice_fraction * slice)`` across
        the slices. A thick slice averages a choroid-plexus glomus with the
        ventricle above or below it, so on the interpolated working slices the
        ventricle ends up to half a slice away from where the glomus shows. 0.5
        (2.75 mm for 5.5 mm slices; unchanged for 3 mm slices, whose half is
        under the 2 mm margin). Measured on 40 simulated 5.5 mm heads
        (1000-1039, ``default`` preset): false detections 17 -> 12 (5 glomus
        foci of 48-1230 mm3), the same 134 of 189 lesions found; 1.0 (the whole
        slice) loses two small periventricular lesions. The Lesjak pairs
        averaged to 5 mm slices with planted lesions (three sets) are
        unchanged. See ``benchmarks/README.md``. 0 keeps the margin isotropic.
    ventricle_fraction : float
        Candidates with at least this fraction of voxels inside or within
        ``ventricle_margin_mm`` of a ventricle (the neighbourhood above on split
        grids) are rejected as choroid plexus. Periventricular MS lesions extend
        away from the ventricle, so less than half of their voxels lie in that
        band.
    plexus_nodule_blob_ratio, plexus_nodule_csf_mm : float
        A small periventricular lesion lies wholly within ``ventricle_margin_mm``
        of the ventricle. A non-ring candidate whose peak is round (``blob_ratio
        >= plexus_nodule_blob_ratio``, 0.5), strongly significant (``max_z >=
        round_min_z``) and whose core lies in tissue (``csf_distance_mm >=
        plexus_nodule_csf_mm``, 2 mm) is not choroid plexus, whose peaks are
        tube-like (:func:`gdlesion.rules.choroid_plexus`); a large compact
        candidate (``round_min_volume_mm3``, ``round_max_compactness``) counts
        as round whatever its peak. 0 disables it (``clinical-2d``).
    max_csf_distance_mm : float
        A candidate whose enhancing core lies at most this far (median, mm,
        inclusive) from CSF spaces (sulci, cisterns, ventricles, outside the
        brain), where veins and choroid plexus run, is rejected (see
        :func:`gdlesion.rules.csf_space`).
    csf_ring_min_z : float
        A ring-enhancing candidate peaking at ``max_z >= csf_ring_min_z`` (8)
        is exempt from that rule: the core of a ring lesion does not enhance
        and is dark on both scans like CSF, and beside a ventricle or a sulcus
        it joins that space. 0 disables it (``clinical-2d``: a ring is not
        resolved on thick slices).
    csf_nodule_min_volume_mm3 : float
        A non-ring candidate of at least this volume (100 mm3) that is compact
        (``compactness <= round_max_compactness``) and strongly significant
        (``max_z >= round_min_z``) is exempt from that rule too: a T1-dark
        lesion opening into a sulcus or a ventricle is part of that space on
        the pre scan (:func:`gdlesion.rules.csf_space`). 0 disables it
        (``clinical-2d``).
    flair_min_z : float
        With a FLAIR scan, a candidate needs a mean FLAIR intensity of at least
        this many robust standard deviations above the brain median. Measured
        on the expert-delineated FLAIR lesions of the three Lesjak patients
        (216 lesions): the mean robust z of a lesion is 0.9 / 1.2-1.7 / 1.5-2.1
        at the 5th / 25th / 50th percentile, so 1.0 would reject about one
        lesion in ten; 0.5 keeps nearly all, while vessels, plexus and the
        white-matter residual lie at or below 0.45 on the unmodified pairs.
    flair_exempt_z : float
        With a FLAIR scan, candidates whose mean FLAIR robust z is at least
        this are exempt from the location rules (brain edge, choroid plexus,
        CSF space; :func:`gdlesion.rules.flair_exempt`). 0 (default) disables
        it; the ``flair`` preset uses 2.
    brain_opening_mm : float
        Radius of the opening that separates brain from scalp in the brain mask.
    min_brain_volume_ml : float
        A brain mask smaller than this means the post scan holds no brain.
    bias_correction : str
        ``"none"`` or ``"n4"`` (N4 on the post scan; the same field divides the
        pre scan, since both share the coil's bias).
    work_voxel_mm : float
        Post-scan voxel axes at least twice this size are split into working
        voxels of about this size (:mod:`gdlesion.workgrid`) before anything
        else, and the results are brought back to the post grid. The rules'
        mm and shape values were chosen on 1 mm scans. On the Lesjak pairs
        averaged to 3 mm slices (``benchmarks/detection.py --slices 3``, four
        planted sets) the default preset on the split grid found 69/96 lesions
        >= 3 mm (70/96 with ``round_min_z`` 6, 71/96 with
        ``min_conspicuity_ring``) with 0.5 false detections per scan and 1.0
        per unmodified scan; ``clinical-2d`` on the 3 mm grid
        47/96 with 3.75 and 3.33. On 12 simulated heads averaged the same way:
        58/64 and 54/64, none false. At 5 mm slices (three planted sets):
        39/72 against 13/72, 0.9 against 3.4 false detections per scan (see
        :func:`auto_preset`).
        Default 1.0; 0 (``clinical-2d``) analyses the post grid as it is.
    min_overlap : float
        After registration the pre scan must cover at least this fraction of
        the post scan's brain mask (inclusive).
    min_similarity : float
        After registration the pre scan's Pearson correlation with the post
        scan over the head (``RegistrationResult.similarity_after``) must be at
        least this (inclusive); below, the registration failed or the scans are
        of different heads, and the study is refused. Pre/post pairs of one
        session give 0.65-0.90 (the real Lesjak and TCGA pairs, simulated and
        sample_data pairs); a pre scan of another subject 0.03-0.35 on the real
        scans and 0.49 between two simulated heads, which share one anatomy
        template. Default 0.25; ``run_study`` warns below 0.5.
    """

    smoothing_mm: float = 0.8
    high_threshold: float = 6.0
    low_threshold: float = 3.0
    min_extent_resels: float = 8.0
    blob_seed_threshold: float = 4.0
    blob_seed_ratio: float = 0.7
    misregistration_mm: float = 0.5
    shift_tolerance_mm: float = 0.0
    noise_guide_mm: float = 2.0
    boundary_fraction: float = 0.5
    part_peak_fraction: float = 0.2
    regrow_radius_mm: float = 4.0
    min_volume_mm3: float = 6.0
    min_enhancement_pct: float = 25.0
    min_enhancement_pct_nodule: float = 20.0
    split_saddle_ratio: float = 0.4
    vessel_elongation: float = 3.0
    vessel_min_length_mm: float = 6.0
    vessel_max_thickness_mm: float = 5.0
    vessel_min_compactness: float = 6.0
    vessel_max_blob_ratio: float = 0.3
    vessel_blob_exempt: float = 0.6
    vessel_min_enhancement_pct: float = 150.0
    ring_max_outline_compactness: float = 15.0
    vessel_carve_mm: float = 2.0
    vessel_split_blob_ratio: float = 0.6
    vessel_split_min_z: float = 12.0
    min_conspicuity: float = 3.0
    min_conspicuity_elongated: float = 4.5
    elongated_blob_ratio: float = 0.6
    min_conspicuity_round: float = 2.0
    min_conspicuity_ring: float = 2.0
    round_blob_ratio: float = 0.7
    round_min_volume_mm3: float = 100.0
    round_max_compactness: float = 3.0
    round_min_z: float = 6.0
    edge_margin_mm: float = 3.0
    edge_fraction: float = 0.5
    edge_slice_fraction: float = 1.0
    edge_round_blob_ratio: float = 0.6
    edge_round_conspicuity: float = 4.5
    ventricle_margin_mm: float = 2.0
    ventricle_slice_fraction: float = 0.5
    ventricle_fraction: float = 0.5
    plexus_nodule_blob_ratio: float = 0.5
    plexus_nodule_csf_mm: float = 2.0
    max_csf_distance_mm: float = 1.0
    csf_ring_min_z: float = 8.0
    csf_nodule_min_volume_mm3: float = 100.0
    flair_min_z: float = 0.5
    flair_exempt_z: float = 0.0
    brain_opening_mm: float = 5.0
    min_brain_volume_ml: float = 20.0
    bias_correction: str = "none"
    work_voxel_mm: float = 1.0
    min_overlap: float = 0.5
    min_similarity: float = 0.25

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, str):
                if not isinstance(value, str):
                    raise InputError(f"detection parameter {f.name}={value!r} is not a string")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"detection parameter {f.name}={value!r} is not a number")
            if not value >= 0:
                raise InputError(f"detection parameter {f.name}={value!r} must be >= 0")
        if self.bias_correction not in ("none", "n4"):
            raise InputError(f"bias_correction={self.bias_correction!r}: use 'none' or 'n4'")
        if self.low_threshold > self.high_threshold:
            raise InputError(
                f"low_threshold={self.low_threshold} exceeds high_threshold={self.high_threshold}"
            )
        ratios = ("blob_seed_ratio", "vessel_max_blob_ratio", "vessel_blob_exempt",
                  "elongated_blob_ratio", "round_blob_ratio", "edge_round_blob_ratio")
        for name in ratios:
            if getattr(self, name) > 1:
                raise InputError(f"{name}={getattr(self, name)} must be <= 1 (a ball is 1)")
        if self.part_peak_fraction > 1:
            raise InputError(f"part_peak_fraction={self.part_peak_fraction} must be <= 1")
        if not self.split_saddle_ratio < 1:
            raise InputError(f"split_saddle_ratio={self.split_saddle_ratio} must be < 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> DetectionParams:
        """Return a copy with some fields changed (validated)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"unknown detection parameter(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


#: Pipeline name that picks the preset from the data (:func:`auto_preset`).
AUTO = "auto"


def auto_preset(zooms: Any, *, has_flair: bool) -> str:
    """Preset that fits a study: ``flair``, ``default`` or ``clinical-2d``.

    Scans with a FLAIR get ``flair`` (noise per tissue class, smaller
    minimum size: more sensitive, the FLAIR rule removes what that lets
    through), others ``default``. Both split post-scan voxel edges of 2 mm or
    more into ~1 mm working voxels (``work_voxel_mm``), so thick slices are
    analysed with the rules chosen on 1 mm scans. Axes of half the working
    size or less are merged first (:func:`gdlesion.workgrid.merge_factors`),
    so a grid too fine in-plane for its slices to be split alone (0.45 x 0.45
    x 5 mm: working voxels under 0.7 mm3,
    :func:`gdlesion.workgrid.subdivision_factors`) gets the same presets;
    ``clinical-2d`` is left for a grid that still has an edge of 2 mm or more
    after both (none of the usual MRI grids; until the twenty-second session
    every such fine in-plane grid got it).

    Until the twentieth session slices of 4 mm or more went to
    ``clinical-2d``, chosen on the simulator's 5.5 mm heads. On real anatomy
    it found little: the three Lesjak pairs averaged to 5 mm slices, three
    planted sets (seeds 0, 3, 6; ``benchmarks/detection.py --slices 5``),
    13/72 lesions >= 3 mm with 3.4 false detections per scan and 3.0
    detections per unmodified scan, where the split ``default`` found 39/72
    with 0.9 and 2.0 (with FLAIR 13/72 against 43/72, 0.44 false
    detections per scan both); on the real thick-slice TCGA pair the tumour's
    Dice went 0.64 -> 0.76. On the 40 simulated 5.5 mm heads 1000-1039 the
    split does worse: 134/189 instead of 148/189, 0.40 instead of 0.10
    false detections per scan (with FLAIR 138/189 and 0.48 against 147/189
    and 0.00; 135/189 and 0.30, with FLAIR 139/189 and 0.50, after the
    twenty-first session's ventricle neighbourhood and slice-profile
    elongation). The real anatomy decides: thick-slice residuals of real heads
    are structured in a way the simulator's are not (see
    ``benchmarks/README.md``). ``clinical-2d`` stays available by name.

    Examples
    --------
    >>> auto_preset((0.9, 0.9, 5.5), has_flair=False)
    'default'
    >>> auto_preset((1.0, 1.0, 1.0), has_flair=True)
    'flair'
    >>> auto_preset((0.45, 0.45, 5.0), has_flair=False)
    'default'
    """
    import numpy as np  # not at import time: the CLI sets numpy's switches first

    from .workgrid import merge_factors, subdivision_factors

    zooms = np.asarray(zooms, dtype=np.float64)
    work = DetectionParams().work_voxel_mm
    zooms = zooms * np.asarray(merge_factors(zooms, work))
    if (zooms / np.asarray(subdivision_factors(zooms, work))).max() >= 2 * work - 1e-6:
        return "clinical-2d"  # cannot be brought near the working voxel size
    return "flair" if has_flair else "default"


def preset_names() -> list[str]:
    """Names of the packaged presets, sorted."""
    folder = resources.files("gdlesion") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_params(name_or_file: str | os.PathLike[str] | None = None) -> DetectionParams:
    """Load detection parameters from a preset name or a JSON file.

    Parameters
    ----------
    name_or_file : str or os.PathLike or None
        A preset name (see :func:`preset_names`), a path to a JSON object of
        :class:`DetectionParams` fields, or None for the defaults.

    Returns
    -------
    DetectionParams

    Raises
    ------
    InputError
        Unknown preset, unreadable or invalid JSON, unknown field or bad value.

    Examples
    --------
    >>> load_params("high-sensitivity").high_threshold < load_params().high_threshold
    True
    """
    if name_or_file is None:
        return DetectionParams()
    text_name = str(name_or_file)
    if text_name in preset_names():
        source = f"preset {text_name}"
        text = (resources.files("gdlesion") / "presets" / f"{text_name}.json").read_text("utf-8")
    else:
        path = Path(name_or_file)
        source = f"pipeline file {path}"
        if not path.is_file():
            raise InputError(
                f"pipeline {text_name!r}: not a preset ({', '.join(preset_names())}) nor a file"
            )
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: cannot be read ({exc.__class__.__name__})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: invalid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{source}: expected a JSON object of parameter names and values")
    obj = {k: v for k, v in obj.items() if not k.startswith("_")}  # "_comment" keys document
    try:
        return DetectionParams().replace(**obj)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise InputError(f"{source}: {exc}") from None
