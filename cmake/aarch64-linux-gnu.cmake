# Cross-compiling for aarch64 Linux with Debian's g++-aarch64-linux-gnu (tests/run_arm.sh). The tests then run
# through qemu-user: CMake prefixes every test command with CMAKE_CROSSCOMPILING_EMULATOR, and qemu picks its
# CPU model from QEMU_CPU (max: dotprod + i8mm; cortex-a72: plain NEON), so one build covers both kernels.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
