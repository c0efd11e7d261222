"""What the library accepts, named where the application reads it without importing TensorFlow: the
config checks flags and config files against these before the loop is imported, so each is written once.

    LR_SCHEDULES   the learning-rate schedules gradloop.loop.schedules builds by name
    MAX_INT32      the most steps one compiled call runs (CompileOptions.steps_per_execution)
"""

LR_SCHEDULES = ("constant", "cosine", "exponential", "step")
MAX_INT32 = 2**31 - 1  # the count travels as an int32 tensor, and tf.constant(2**32, tf.int32) silently wraps to 0
