// The register-tiled GEMM of the step loops (sequence_kernels_impl.h), written once with
// at::vec::Vectorized and compiled once per CPU capability. Included inside
// namespace fused_rnn::cpu::CPU_CAPABILITY.
//
// Every step multiplies the carried state a [rows, K] by the same op(W) [K, N]; op(W) is packed
// once per call into panels (Panels): panel p holds, for each k in order, a few vectors of
// consecutive output columns, so the inner loop of a tile reads one contiguous run of the panel
// per k, broadcasts one element of each of its rows of `a`, and keeps a tile of rows x vectors of
// sums in registers. Each output element is one chain of fused multiply-adds over k in order, the
// same whatever the number of rows: a row's result does not depend on which other rows run.

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

/// Rows of one register tile with `vectors` vectors per row: sums, the panel's vectors for one k
/// and a broadcast fit in the vector registers (AVX2's 4 x 3 tile takes all 16, and its loop
/// keeps every one in a register: 2 Zen 3 threads, GRU T128 B64 H512 no-grad 0.92x the 3 x 3
/// tile's time).
constexpr int tile_rows(int vectors) {
  return std::max(1, (kVectorRegisters - vectors - 1) / vectors);
}

/// Vectors per row of the register tiles that cover a panel of `panel_vectors` vectors per k
/// for more rows than one tile of them all holds: all of them, except with 16 registers and 4
/// vectors, which leave room for 2 rows (8 sums, barely the independent chains that two FMA
/// pipes of latency 4 need): there 2, in two passes over the panel, 6 rows (12 sums) a tile (2
/// Zen 3 threads, no grad: LSTM T128 B64 H512 217 against 294 ms, RNN 67 against 76). Three
/// vectors (GRU) stay whole, 4 rows a tile: in passes of 2 and 1 the second reads a row element
/// per multiply-add (GRU T128 B64 H512 257 against 220 ms).
constexpr int tile_vectors(int panel_vectors) {
  return kVectorRegisters < 32 && panel_vectors == 4 ? 2 : panel_vectors;
}

/// The panel layout of op(W) [K, N] with N = gates * units: gate g, unit j is column
/// g * units + j. Panel p covers units [p * span(), (p + 1) * span()) of every gate: for each k,
/// the `vectors` vectors of those units of gate 0, then of gate 1, ... (gates * vectors vectors
/// per k, zeros past the last unit). Grouping the gates of the same units lets the pointwise pass
/// of a cell follow the product of each panel.
template <typename acc_t>
struct Panels {
  static constexpr int64_t kLanes = at::vec::Vectorized<acc_t>::size();

  acc_t* data = nullptr;  // [count()][depth][width()]
  int64_t depth = 0;      // K
  int64_t units = 0;
  int64_t gates = 1;
  int64_t vectors = 1;

  /// The layout of the product by a weight with `gates` gates of `units` units (output columns)
  /// over `depth` inputs; data is set by the caller (elements() of them).
  static Panels layout(int64_t gates, int64_t units, int64_t depth) {
    // Four vectors per k make a 4-gate LSTM panel; GRU's three gates make three.
    const int64_t vectors = gates >= 3 ? 1 : 4;
    return {nullptr, depth, units, gates, vectors};
  }

  int64_t span() const { return vectors * kLanes; }
  int64_t count() const { return (units + span() - 1) / span(); }
  int64_t width() const { return gates * span(); }
  int64_t elements() const { return count() * depth * width(); }
  acc_t* panel(int64_t p) const { return data + p * depth * width(); }
  int64_t unit_begin(int64_t p) const { return p * span(); }
  int64_t unit_end(int64_t p) const { return std::min(units, (p + 1) * span()); }
};

/// Packs panels [p0, p1) of op(W) from `source`, whose element (k, n) of op(W) is
/// source[n * n_stride + k * k_stride]: with k_stride 1 (op(W) = W^T) by transposing blocks of
/// kLanes x kLanes, which reads the rows of W in order (element by element, each k would read as
/// many rows as a panel has columns, a page apart for large weights: a TLB miss per element).
template <typename acc_t>
void pack_panels(const Panels<acc_t>& w, const acc_t* source, int64_t n_stride, int64_t k_stride,
                 int64_t p0, int64_t p1) {
  constexpr int64_t L = Panels<acc_t>::kLanes;
  const int64_t width = w.width();
  for (int64_t p = p0; p < p1; ++p) {
    acc_t* panel = w.panel(p);
    for (int64_t g = 0; g < w.gates; ++g) {
      for (int64_t v = 0; v < w.vectors; ++v) {
        const int64_t unit = w.unit_begin(p) + v * L;
        const int64_t valid = std::clamp<int64_t>(w.units - unit, 0, L);
        acc_t* column = panel + (g * w.vectors + v) * L;  // lanes of this vector at every k
        const acc_t* first = source + (g * w.units + unit) * n_stride;  // element (0, n) of op(W)
        for (int64_t k = 0; k < w.depth; k += (k_stride == 1 ? L : 1)) {
          if (k_stride == 1) {
            at::vec::transpose_mxn<acc_t>(first + k, n_stride, column + k * width, width,
                                          static_cast<int>(valid),
                                          static_cast<int>(std::min(L, w.depth - k)));
          } else {
            std::copy_n(first + k * k_stride, valid, column + k * width);
          }
        }
        if (valid < L) {
          for (int64_t k = 0; k < w.depth; ++k) {
            std::fill(column + k * width + valid, column + k * width + L, acc_t(0));
          }
        }
      }
    }
  }
}

/// Where the vectors of one panel land in a row of the output, and how many of their lanes are
/// real columns (0 past the last unit).
template <int kVectors>
struct TileColumns {
  int64_t offset[kVectors];
  int64_t valid[kVectors];
};

/// out[r, columns] (+)= sum_k a[r, k] * panel[k] for rows r < kRows: one register tile over
/// kVectors of the kPanelVectors vectors per k of a panel, from `panel` (its first vector at
/// k = 0) on. a(r, k) is a[r * lda + k * a_depth_stride].
template <typename acc_t, int kRows, int kVectors, int kPanelVectors>
void tile_product(const acc_t* a, int64_t lda, int64_t a_depth_stride, const acc_t* panel,
                  int64_t depth, acc_t* out, int64_t ldo, const TileColumns<kVectors>& columns,
                  bool accumulate) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  Vec sums[kRows][kVectors];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVectors; ++v) {
      sums[r][v] = Vec(acc_t(0));
    }
  }
  const acc_t* rows[kRows];
  for (int r = 0; r < kRows; ++r) {
    rows[r] = a + r * lda;
  }
  for (int64_t k = 0; k < depth; ++k) {
    const acc_t* b = panel + k * kPanelVectors * kLanes;
    Vec column[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      column[v] = Vec::loadu(b + v * kLanes);
    }
    for (int r = 0; r < kRows; ++r) {
      const Vec element(rows[r][k * a_depth_stride]);
      for (int v = 0; v < kVectors; ++v) {
        sums[r][v] = at::vec::fmadd(element, column[v], sums[r][v]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    acc_t* row = out + r * ldo;
    for (int v = 0; v < kVectors; ++v) {
      const int64_t valid = columns.valid[v];
      if (valid == 0) {
        continue;
      }
      acc_t* target = row + columns.offset[v];
      const Vec value = accumulate ? sums[r][v] + Vec::loadu(target, valid) : sums[r][v];
      value.store(target, valid);
    }
  }
}

template <typename acc_t, int kVectors>
using TileProduct = void (*)(const acc_t*, int64_t, int64_t, const acc_t*, int64_t, acc_t*,
                             int64_t, const TileColumns<kVectors>&, bool);

/// tile_product for 1 .. tile_rows(kVectors) rows, indexed by rows - 1.
template <typename acc_t, int kVectors, int kPanelVectors, int... kRowsMinusOne>
constexpr std::array<TileProduct<acc_t, kVectors>, sizeof...(kRowsMinusOne)> tile_products(
    std::integer_sequence<int, kRowsMinusOne...>) {
  return {&tile_product<acc_t, kRowsMinusOne + 1, kVectors, kPanelVectors>...};
}

/// The tiles of panel p over its vectors [kFirst, kFirst + kVectors) of kPanelVectors per k.
template <typename acc_t, int kFirst, int kVectors, int kPanelVectors>
void panel_pass(const Panels<acc_t>& w, int64_t p, int64_t rows, const acc_t* a, int64_t lda,
                int64_t a_depth_stride, acc_t* out, int64_t ldo, bool accumulate) {
  constexpr int kRows = tile_rows(kVectors);
  static constexpr auto products =
      tile_products<acc_t, kVectors, kPanelVectors>(std::make_integer_sequence<int, kRows>());
  TileColumns<kVectors> columns;
  for (int v = 0; v < kVectors; ++v) {
    const int64_t unit = w.unit_begin(p) + ((kFirst + v) % w.vectors) * w.kLanes;
    columns.offset[v] = ((kFirst + v) / w.vectors) * w.units + unit;
    columns.valid[v] = std::clamp<int64_t>(w.units - unit, 0, w.kLanes);
  }
  const acc_t* panel = w.panel(p) + kFirst * w.kLanes;
  // Rows in tiles of sizes as equal as kRows allows: a last tile of a few rows would read the
  // whole panel for a few sums per k (32 rows as four tiles of 5 and two of 6, not five of 6 and
  // one of 2: 3-10 % faster LSTM steps at 32 and 8 rows per thread).
  const int64_t tiles = (rows + kRows - 1) / kRows;
  for (int64_t tile = 0, m = 0; tile < tiles; ++tile) {
    const int64_t count = rows * (tile + 1) / tiles - m;
    products[count - 1](a + m * lda, lda, a_depth_stride, panel, w.depth, out + m * ldo, ldo,
                        columns, accumulate);
    m += count;
  }
}

/// Every pass of tile_vectors(kPanelVectors) vectors (the last one what remains) over panel p.
template <typename acc_t, int kPanelVectors, int kFirst = 0>
void panel_product_of(const Panels<acc_t>& w, int64_t p, int64_t rows, const acc_t* a,
                      int64_t lda, int64_t a_depth_stride, acc_t* out, int64_t ldo,
                      bool accumulate) {
  constexpr int kVectors = std::min(tile_vectors(kPanelVectors), kPanelVectors - kFirst);
  panel_pass<acc_t, kFirst, kVectors, kPanelVectors>(w, p, rows, a, lda, a_depth_stride, out, ldo,
                                                     accumulate);
  if constexpr (kFirst + kVectors < kPanelVectors) {
    panel_product_of<acc_t, kPanelVectors, kFirst + kVectors>(w, p, rows, a, lda, a_depth_stride,
                                                              out, ldo, accumulate);
  }
}

/// out [rows, N] (+)= a [rows, K] @ op(W) restricted to the columns of panel p: a(r, k) at
/// a[r * lda + k * a_depth_stride], out of row stride ldo in op(W)'s column layout (gate g, unit
/// j at column g * units + j).
template <typename acc_t>
void panel_product(const Panels<acc_t>& w, int64_t p, int64_t rows, const acc_t* a, int64_t lda,
                   int64_t a_depth_stride, acc_t* out, int64_t ldo, bool accumulate) {
  if (w.gates * w.vectors == 3) {
    panel_product_of<acc_t, 3>(w, p, rows, a, lda, a_depth_stride, out, ldo, accumulate);
  } else if (rows <= tile_rows(4)) {
    // Rows that one tile of all 4 vectors holds: in passes, its tiles would hold half the
    // independent chains (B = 1: LSTM T512 H512 45 against 32 ms).
    panel_pass<acc_t, 0, 4, 4>(w, p, rows, a, lda, a_depth_stride, out, ldo, accumulate);
  } else {
    panel_product_of<acc_t, 4>(w, p, rows, a, lda, a_depth_stride, out, ldo, accumulate);
  }
}

// A product of fewer flops than this runs on one thread: splitting it would cost more in the
// fork or barrier than it saves (about a microsecond of single-core GEMM).
constexpr int64_t kFlopsPerExtraThread = 1 << 18;

// The streamed GEMM packs one panel of b at a time over at most this many k (256 KiB in float64
// with 512-bit vectors: 4 vectors, 256 bytes, per k) and multiplies it by at most this many rows of a
// before packing the next: the panel stays in the member's L2 while every tile of rows reads it,
// and b is read about once per block of rows.
constexpr int64_t kStreamedDepth = 1024;
constexpr int64_t kStreamedRows = 1024;

/// SequenceKernels::gemm: out (+)= a @ b through the register-tiled GEMM, a team splitting the
/// panels of b, each member packing its panel into its own slice of one workspace just before
/// multiplying by it (no copy of the whole of b, which a single step would read only once).
template <typename acc_t>
void streamed_gemm(const GemmOperands& g) {
  const Panels<acc_t> shape = Panels<acc_t>::layout(1, g.n, g.k);
  const int64_t span = shape.span(), panels = shape.count();
  const int threads = static_cast<int>(std::min<int64_t>(
      {team_threads(), panels, 1 + 2 * g.m * g.n * g.k / kFlopsPerExtraThread}));
  constexpr int64_t kLine = 64 / sizeof(acc_t);
  const int64_t slice = (std::min(g.k, kStreamedDepth) * shape.width() + kLine - 1) / kLine * kLine;
  auto* buffers =
      static_cast<acc_t*>(panel_workspace(std::max<int64_t>(1, threads * slice) * sizeof(acc_t)));
  const auto* a = static_cast<const acc_t*>(g.a);
  const auto* b = static_cast<const acc_t*>(g.b);
  auto* out = static_cast<acc_t*>(g.out);
  run_team(threads, [&](const Team& team) {
    const auto [p0, p1] = team.share(panels);
    acc_t* buffer = buffers + team.id * slice;
    for (int64_t r0 = 0; r0 < g.m; r0 += kStreamedRows) {
      const int64_t rows = std::min(kStreamedRows, g.m - r0);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * span;
        // k0 == 0 runs once at k = 0 too: the product of an empty depth writes zeros.
        for (int64_t k0 = 0; k0 == 0 || k0 < g.k; k0 += kStreamedDepth) {
          const Panels<acc_t> panel{buffer, std::min(kStreamedDepth, g.k - k0),
                                    std::min(span, g.n - n0), 1, shape.vectors};
          pack_panels(panel, b + k0 * g.b_depth_stride + n0 * g.b_column_stride,
                      g.b_column_stride, g.b_depth_stride, 0, 1);
          panel_product(panel, 0, rows, a + r0 * g.a_row_stride + k0 * g.a_depth_stride,
                        g.a_row_stride, g.a_depth_stride, out + r0 * g.out_row_stride + n0,
                        g.out_row_stride, g.accumulate || k0 > 0);
        }
      }
    }
  });
}
