"""RFC 6962 Merkle hashing, compact ranges and proofs: published vectors and a naive model."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.integrity.errors import MalformedCheckpoint, ProofInvalid
from processors.integrity.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# The 8-leaf RFC 6962 test tree used by Certificate Transparency / Trillian
# (transparency-dev/merkle proof/verify_test.go).
LEAVES = [
    h(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    h(x)
    for x in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# (leaf index 0-based, tree size, proof)
INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


# ---- naive reference implementation, straight from RFC 6962 section 2.1 ----


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return naive_path(m, d[:k]) + [naive_mth(d[k:])]
    return naive_path(m - k, d[k:]) + [naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return naive_subproof(m, d[:k], b) + [naive_mth(d[k:])]
    return naive_subproof(m - k, d[k:], False) + [naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else naive_subproof(m, d, True)


def data(n: int) -> list[bytes]:
    """n distinct leaves shaped like record hashes."""
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]


def getter(leaves: list[bytes]):
    hashes = [leaf_hash(x) for x in leaves]
    return hashes.__getitem__


def flip(b: bytes, bit: int) -> bytes:
    bit %= len(b) * 8
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# ---- vectors ----


def test_empty_root_and_hash_functions() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_of([]) == EMPTY_ROOT
    assert leaf_hash(b"") == ROOTS[0]
    assert node_hash(ROOTS[0], leaf_hash(b"\x00")) == ROOTS[1]


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_roots(size: int) -> None:
    assert root_of(LEAVES[:size]) == ROOTS[size - 1]
    assert naive_mth(LEAVES[:size]) == ROOTS[size - 1]
    assert subtree_root(getter(LEAVES), 0, size) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_rfc6962_inclusion_vectors(index: int, size: int, proof: list[str]) -> None:
    want = [h(x) for x in proof]
    assert inclusion_proof(index, size, getter(LEAVES)) == want
    assert naive_path(index, LEAVES[:size]) == want
    verify_inclusion(LEAVES[index], index, size, want, ROOTS[size - 1])
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, want, ROOTS[size - 1], prehashed=True)
    # the classic corruptions of transparency-dev/merkle's verifier tests
    root = ROOTS[size - 1]
    probes = [
        (index + 1, size, want, root),
        (index ^ 2, size, want, root),
        (index, size * 2, want, root),
        (index, size // 2, want, root),
        (index, size, want, EMPTY_ROOT),
        (index, size, [*want, root], root),
        (index, size, [root, *want], root),
        (index, size, want[:-1], root),
        (index, size, [*want[:-1], b""], root),
    ]
    if index > 0:
        probes.append((index - 1, size, want, root))
    for i, s, p, r in probes:
        with pytest.raises(ProofInvalid):
            verify_inclusion(LEAVES[index], i, s, p, r)
    with pytest.raises(ProofInvalid):
        verify_inclusion(b"WrongLeaf", index, size, want, root)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_rfc6962_consistency_vectors(size1: int, size2: int, proof: list[str]) -> None:
    want = [h(x) for x in proof]
    assert consistency_proof(size1, size2, getter(LEAVES)) == want
    assert naive_proof(size1, LEAVES[:size2]) == want
    r1, r2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    verify_consistency(size1, size2, want, r1, r2)
    probes = [
        (size1 - 1, size2, want, r1, r2),
        (size1 + 1, size2, want, r1, r2),
        (size1 ^ 2, size2, want, r1, r2),
        (size1, size2 * 2, want, r1, r2),
        (size1, size2 // 2, want, r1, r2),
        (size1, size2, want, r2, r1),
        (size1, size2, [], r1, r2),
        (size1, size2, [*want, r1], r1, r2),
        (size1, size2, [r2, *want], r1, r2),
        (size1, size2, [want[0], *want], r1, r2),
        (size1, size2, want[:-1], r1, r2),
    ]
    for s1, s2, p, a, b in probes:
        with pytest.raises(ProofInvalid):
            verify_consistency(s1, s2, p, a, b)


def test_trivial_consistency() -> None:
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[4])
    verify_consistency(3, 3, [], ROOTS[2], ROOTS[2])
    for args in [
        (3, 3, [], ROOTS[2], ROOTS[3]),
        (3, 3, [EMPTY_ROOT], ROOTS[2], ROOTS[2]),
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[0]),
        (0, 1, [], ROOTS[0], ROOTS[0]),  # size 0 must claim the empty root (stricter than RFC)
        (2, 1, [], ROOTS[1], ROOTS[0]),
        (1, 2, [], ROOTS[0], ROOTS[1]),
    ]:
        with pytest.raises(ProofInvalid):
            verify_consistency(*args)
    assert consistency_proof(0, 4, getter(LEAVES)) == []
    assert consistency_proof(4, 4, getter(LEAVES)) == []


def test_inclusion_edge_cases() -> None:
    single = leaf_hash(b"data")
    verify_inclusion(b"data", 0, 1, [], single)
    for index, size in [(0, 0), (1, 1), (-1, 1), (2, 1)]:
        with pytest.raises(ProofInvalid):
            verify_inclusion(b"data", index, size, [], single)
    with pytest.raises(ProofInvalid):
        verify_inclusion(b"", 0, 1, [], single, prehashed=True)
    with pytest.raises(ValueError):
        inclusion_proof(3, 3, getter(LEAVES))


def test_proof_invalid_carries_evidence() -> None:
    want = [h(x) for x in INCLUSION[1][2]]
    with pytest.raises(ProofInvalid) as exc:
        verify_inclusion(LEAVES[5], 5, 8, want, ROOTS[6])
    assert exc.value.kind == "proof_invalid"
    assert exc.value.expected == ROOTS[6]
    assert exc.value.found == ROOTS[7]
    assert exc.value.seq == 5


# ---- compact range ----


def test_compact_range_every_size() -> None:
    leaves = data(300)
    cr = CompactRange()
    assert cr.root() == EMPTY_ROOT and cr.to_bytes() == b""
    for n in range(1, 301):
        cr.append(leaves[n - 1])
        assert cr.size == n
        assert len(cr.hashes) == n.bit_count()
        assert cr.root() == naive_mth(leaves[:n]), n
        back = CompactRange.from_bytes(n, cr.to_bytes())
        assert back == cr and back.root() == cr.root()
        # resuming from the serialised range gives the same tree as never stopping
        if n < 300:
            back.append(leaves[n])
            assert back.root() == naive_mth(leaves[: n + 1])


def test_compact_range_copy_is_independent() -> None:
    cr = CompactRange()
    for x in data(5):
        cr.append(x)
    other = cr.copy()
    other.append(b"x")
    assert cr.size == 5 and other.size == 6 and cr.root() != other.root()
    alt = CompactRange()
    for x in data(5):
        alt.append_leaf_hash(leaf_hash(x))
    assert alt == cr


@pytest.mark.parametrize(("size", "length"), [(1, 0), (1, 64), (3, 32), (0, 32), (-1, 0), (4, 33)])
def test_compact_range_from_bytes_validates(size: int, length: int) -> None:
    with pytest.raises(MalformedCheckpoint):
        CompactRange.from_bytes(size, bytes(length))


def test_proofs_cost_linear_hashing() -> None:
    n = 1000
    leaves = getter(data(n))
    calls = 0

    def counting(i: int) -> bytes:
        nonlocal calls
        calls += 1
        return leaves(i)

    inclusion_proof(617, n, counting)
    assert calls <= n - 1
    calls = 0
    consistency_proof(377, n, counting)
    assert calls <= n


# ---- properties ----

sizes = st.integers(min_value=1, max_value=300)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=sizes)
def test_inclusion_property(data: st.DataObject, size: int) -> None:
    leaves = [hashlib.sha256(b"L" + i.to_bytes(4, "big")).digest() for i in range(size)]
    index = data.draw(st.integers(0, size - 1), label="index")
    root = naive_mth(leaves)
    proof = inclusion_proof(index, size, getter(leaves))
    assert proof == naive_path(index, leaves)
    verify_inclusion(leaves[index], index, size, proof, root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = list(proof)
        bad[i] = flip(bad[i], bit)
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[index], index, size, bad, root)
    bit = data.draw(st.integers(0, 255), label="root bit")
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaves[index], index, size, proof, flip(root, bit))
    with pytest.raises(ProofInvalid):
        verify_inclusion(flip(leaves[index], bit), index, size, proof, root)
    wrong_index = data.draw(st.integers(0, size).filter(lambda j: j != index), label="wrong")
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaves[index], wrong_index, size, proof, root)
    for wrong_size in {size * 2, size // 2}:
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[index], index, wrong_size, proof, root)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size2=sizes)
def test_consistency_property(data: st.DataObject, size2: int) -> None:
    leaves = [hashlib.sha256(b"C" + i.to_bytes(4, "big")).digest() for i in range(size2)]
    size1 = data.draw(st.integers(1, size2), label="size1")
    r1, r2 = naive_mth(leaves[:size1]), naive_mth(leaves)
    proof = consistency_proof(size1, size2, getter(leaves))
    assert proof == naive_proof(size1, leaves)
    verify_consistency(size1, size2, proof, r1, r2)
    bit = data.draw(st.integers(0, 255), label="bit")
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = list(proof)
        bad[i] = flip(bad[i], bit)
        with pytest.raises(ProofInvalid):
            verify_consistency(size1, size2, bad, r1, r2)
    if size1 != size2:
        with pytest.raises(ProofInvalid):
            verify_consistency(size1, size2, proof, flip(r1, bit), r2)
    with pytest.raises(ProofInvalid):
        verify_consistency(size1, size2, proof, r1, flip(r2, bit))
    if proof:
        for s1, s2 in {
            (size1 - 1, size2),
            (size1 + 1, size2),
            (size1, size2 * 2),
            (size1, size2 // 2),
        }:
            if (s1, s2) != (size1, size2):
                with pytest.raises(ProofInvalid):
                    verify_consistency(s1, s2, proof, r1, r2)


def test_extend_equals_appending_one_by_one() -> None:
    import hashlib

    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(300)]
    for start in (0, 1, 5, 64, 127):
        one = CompactRange()
        many = CompactRange()
        for leaf in leaves[:start]:
            one.append(leaf)
            many.append(leaf)
        for leaf in leaves[start:]:
            one.append(leaf)
        many.extend(leaves[start:])
        assert (many.size, many.hashes, many.root()) == (one.size, one.hashes, one.root())
