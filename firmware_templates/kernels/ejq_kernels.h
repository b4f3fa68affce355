/*
 * edgejpq kernel API: the functions generated model code calls, one per op kind and weight
 * bit-width. Every kernel set (portable/, and target-specific sets such as a Cortex-M DSP one)
 * implements exactly these names and signatures with bit-identical results, so the generator
 * picks a set per target without changing the model code.
 *
 * Conventions
 *   - Tensors are int8, channels-last (H, W, C): element (y, x, c) is at (y * W + x) * C + c.
 *   - Offsets are zero points as they are added: input_offset = -input_zero_point,
 *     output_offset = +output_zero_point (as in CMSIS-NN).
 *   - Weighted kernels work on one weight run: output channels [start, start + count) sharing
 *     one bit-width; they write out[pixel * out_c + channel] for those channels only.
 *   - Packed rows: each output channel's K weights in two's complement, little end first within
 *     a byte, each row padded to a whole byte (edgejpq/quant/packing.py). Row order of K:
 *     conv [kh][kw][cin], depthwise [kh][kw], fully connected the input's memory order.
 *   - Parameter structs are `static const` in the generated model (flash on a microcontroller).
 *   - Padding taps contribute nothing to a convolution (as if filled with the zero point).
 *   - No kernel allocates memory or uses floating point.
 */
#ifndef EJQ_KERNELS_H
#define EJQ_KERNELS_H

#include <stdint.h>

/* Output channels [start, start + count) of one weighted layer, all at one weight bit-width. */
typedef struct {
    uint16_t start;              /* first output channel of the run */
    uint16_t count;              /* number of output channels in the run */
    uint32_t row_bytes;          /* bytes of one packed row (one output channel) */
    const uint8_t *weights;      /* packed rows of the run, row_bytes apart */
    const int32_t *bias;         /* count biases (the layer's bias + start) */
    const int32_t *multiplier;   /* count Q31 requantization multipliers */
    const int32_t *shift;        /* count shifts in [-31, 30] (> 0: left) */
    const int32_t *kernel_sum;   /* count sums of each row's weights, for kernels that accumulate
                                    w * x and fold input_offset * sum(w) into the bias; emitted for
                                    fully connected layers, NULL for convolutions */
} ejq_weight_run;

/* Where the sliding windows of a convolution or pooling fall on the input plane. */
typedef struct {
    uint16_t in_h, in_w;
    uint16_t out_h, out_w;
    uint16_t kernel_h, kernel_w;
    uint16_t stride_h, stride_w;
    uint16_t pad_top, pad_left;  /* bottom/right padding follows from the output size */
} ejq_window_geometry;

/* Convolution and depthwise convolution (depth multiplier 1: in_c == out_c). */
typedef struct {
    ejq_window_geometry geometry;
    uint16_t in_c, out_c;
    int32_t input_offset;        /* -input zero point */
    int32_t output_offset;       /* +output zero point */
    int32_t act_min, act_max;    /* output clamp, within [-128, 127] */
    void *scratch;               /* word-aligned work memory of kernels that need it (DSP set), or NULL */
    uint32_t scratch_bytes;      /* its size */
} ejq_conv_params;

/* Fully connected: out[channel] from the whole input (in_size elements, memory order). */
typedef struct {
    uint32_t in_size;
    uint16_t out_size;
    int32_t input_offset;
    int32_t output_offset;
    int32_t act_min, act_max;
    void *scratch;               /* as in ejq_conv_params */
    uint32_t scratch_bytes;
    int32_t single_rounding;     /* 1: requantize as TFLite's FULLY_CONNECTED (ejq_requantize_single_s8) */
} ejq_fc_params;

/* Max / average pooling; average divides by the count of in-bounds elements. */
typedef struct {
    ejq_window_geometry geometry;
    uint16_t channels;
    int32_t act_min, act_max;
} ejq_pool_params;

/* Elementwise add as TFLite's int8 ADD. */
typedef struct {
    uint32_t size;                 /* elements */
    int32_t input1_offset, input2_offset;
    int32_t left_shift;            /* in [0, 24] */
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t output_offset;
    int32_t act_min, act_max;
} ejq_add_params;

/* One input of a channel concatenation: its channels land at [channel_offset, + in_c) of out. */
typedef struct {
    uint32_t pixels;               /* H * W, equal for every input and the output */
    uint16_t in_c, out_c, channel_offset;
    int32_t input_offset;          /* requantizing only: -input zero point */
    int32_t output_offset;         /* requantizing only: +output zero point */
    int32_t multiplier, shift;     /* requantizing only */
} ejq_concat_params;

/* Weighted kernels: one function per weight bit-width, each for one run. */
void ejq_conv2d_s8_w8(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);
void ejq_conv2d_s8_w4(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);
void ejq_conv2d_s8_w2(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);

void ejq_dwconv2d_s8_w8(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);
void ejq_dwconv2d_s8_w4(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);
void ejq_dwconv2d_s8_w2(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);

void ejq_fc_s8_w8(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);
void ejq_fc_s8_w4(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);
void ejq_fc_s8_w2(const ejq_fc_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out);

/* Unweighted kernels. */
void ejq_maxpool_s8(const ejq_pool_params *p, const int8_t *in, int8_t *out);
void ejq_avgpool_s8(const ejq_pool_params *p, const int8_t *in, int8_t *out);
/* out may be input1 or input2 (in place): each element is read before it is written. */
void ejq_add_s8(const ejq_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *out);
void ejq_concat_copy_s8(const ejq_concat_params *p, const int8_t *in, int8_t *out);
void ejq_concat_requant_s8(const ejq_concat_params *p, const int8_t *in, int8_t *out);
/* Copy n bytes between non-overlapping tensors (a reshape whose input and output were placed apart). */
void ejq_copy_s8(const int8_t *in, int8_t *out, uint32_t n);

#endif /* EJQ_KERNELS_H */
