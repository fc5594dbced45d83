# Finds what the peft target needs: LibTorch (Debian's 1.13 or a pip PyTorch's 2.x; set Torch_DIR or
# CMAKE_PREFIX_PATH for the latter), nlohmann_json and fmt (header-only). Debian's libtorch-dev brings
# libfmt-dev; a pip PyTorch carries fmt's headers in its include folder, which serve when no fmt package
# is installed. Either way fmt is used header-only, so consumers link nothing more.
if(NOT TARGET torch)
  find_package(Torch REQUIRED)
endif()
find_package(nlohmann_json 3.9 REQUIRED)
include(${CMAKE_CURRENT_LIST_DIR}/PeftFmt.cmake)
if(PEFT_FMT_ERROR)
  message(FATAL_ERROR "${PEFT_FMT_ERROR}")
endif()

# Under add_subdirectory(), targets imported here would be visible only in this directory, but the
# consumer's targets link them through peft::peft: make them global.
if(NOT CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
  get_directory_property(_peft_imported IMPORTED_TARGETS)
  foreach(_t IN LISTS _peft_imported)
    get_target_property(_global ${_t} IMPORTED_GLOBAL)
    if(NOT _global)
      set_target_properties(${_t} PROPERTIES IMPORTED_GLOBAL TRUE)
    endif()
  endforeach()
endif()

# Data parallelism (<peft/train/distributed.hpp>) needs Gloo's headers (Debian: libgloo-dev); the Gloo
# and NCCL libraries live inside LibTorch. peft_enable_distributed(<target>) adds the headers and
# defines PEFT_HAS_DISTRIBUTED, and in a CUDA build of LibTorch with NCCL's header also PEFT_WITH_NCCL;
# without Gloo's headers it does nothing.
find_path(PEFT_GLOO_INCLUDE_DIR gloo/context.h)
function(peft_enable_distributed target)
  if(NOT PEFT_GLOO_INCLUDE_DIR)
    return()
  endif()
  target_include_directories(${target} PRIVATE ${PEFT_GLOO_INCLUDE_DIR})
  target_compile_definitions(${target} PRIVATE PEFT_HAS_DISTRIBUTED)
  if(TARGET torch_cuda)
    find_path(PEFT_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
    if(PEFT_NCCL_INCLUDE_DIR)
      target_compile_definitions(${target} PRIVATE PEFT_WITH_NCCL)
      target_include_directories(${target} PRIVATE ${PEFT_NCCL_INCLUDE_DIR})
    endif()
  endif()
endfunction()
