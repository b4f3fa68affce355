/*
 * DSP depthwise convolution (depth multiplier 1) over one weight run, eight channels at a time; also
 * a convolution with one input channel (ejq_dsp_conv.h), where every output channel reads the one
 * input plane.
 *
 * Depthwise has no reduction over channels, so SMLAD pairs neighbouring taps of one channel
 * instead: the channels' input rows are converted into int16 planes (x - zero point, with zero
 * padding around them; two pixels of four channels at a time) kept in a ring of kernel_h rows, each
 * input row converted once per eight channels. Weights are expanded once per eight channels into
 * int16 tap pairs. A 3x3 stride-1 kernel then makes two outputs per kernel row with one LDRD and four
 * multiply-accumulates, the weights in registers (assembly, all channels of a pass in one call);
 * other shapes take tap pairs with one load each. The accumulators of an output row (all channels
 * of the pass) go through a small buffer and are requantized channel by channel, four outputs an
 * iteration (fast requantization path of ejq_dsp.h, SSAT when the clamp is int8's own).
 *
 * The tap expansion and everything after it run the same instructions for every bit-width (noipa
 * functions taking the bit-width at run time), so sub-byte layers cost what 8-bit ones do.
 *
 * Scratch of one call (codegen/dsp_layout.py): requantization table (count entries), tap weights
 * (8 x kernel_h x kw2 int16, kw2 = kernel_w rounded up to even), planes (8 x kernel_h x plane_w
 * int16), the accumulators of one output row (8 x out_w words), the input row held by each ring
 * slot (kernel_h words).
 */
#ifndef EJQ_DSP_DW_H
#define EJQ_DSP_DW_H

#include "ejq_dsp.h"

#define EJQ_DW_CHANNELS 8u

/*
 * Depthwise convolution of a run (conv1 = 0), or a convolution with one input channel (conv1 = 1:
 * every output channel reads the one input plane, its weights in the grouped packing). Defined in
 * ejq_dsp_dw.c.
 */
void ejq_dsp_dw_run(const ejq_conv_params *p, const ejq_weight_run *run, const int8_t *in, int8_t *out,
                    uint32_t bits, uint32_t conv1);

#endif /* EJQ_DSP_DW_H */
