// A batch of METER inputs for tests: token ids laid out as RoBERTa does
// (<s> = 0, words, </s> = 2, then padding), the text mask, and two random
// image batches (the second for NLVR2).
#pragma once
#include <vector>

#include "engine/rng.h"
#include "engine/tensor.h"
#include "layers/meter_config.h"

namespace st::testing {

struct MeterBatch {
  Tensor ids;     // i32 (B, T)
  Tensor mask;    // (B, T), 1 for real tokens
  Tensor image;   // (B, 3, S, S), S = the config's image size
  Tensor image2;  // (B, 3, S, S)
  std::vector<int> lengths;  // real tokens per example
};

// lengths[b] real tokens for example b (at least 2), padded to text_len.
inline MeterBatch make_meter_batch(const MeterConfig& c, const std::vector<int>& lengths, int text_len, uint64_t seed) {
  Rng rng(seed);
  const int64_t b = int64_t(lengths.size()), t = text_len, s = c.vit_image_size;
  std::vector<int32_t> ids(size_t(b * t));
  std::vector<float> mask(size_t(b * t));
  for (int64_t i = 0; i < b; i++)
    for (int64_t j = 0; j < t; j++) {
      const int len = lengths[size_t(i)];
      const int32_t word = 3 + int32_t(rng.uniform() * float(c.vocab_size - 4));
      ids[size_t(i * t + j)] = j >= len ? c.pad_token_id : j == 0 ? 0 : j == len - 1 ? 2 : word;
      mask[size_t(i * t + j)] = j < len ? 1.0f : 0.0f;
    }
  MeterBatch batch;
  batch.ids = Tensor::from_ints(ids, {b, t});
  batch.mask = Tensor::from_vector(mask, {b, t});
  batch.image = Tensor::randn({b, 3, s, s}, rng);
  batch.image2 = Tensor::randn({b, 3, s, s}, rng);
  batch.lengths = lengths;
  return batch;
}

}  // namespace st::testing
