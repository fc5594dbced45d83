# Checks the header layering of include/peft: every header includes only headers of its own layer or of
# a layer below it, and the file layer finds methods through the registry, never by name.
#   cmake -DPEFT_SOURCE=<repo> -P tests/layout/check_layers.cmake
#
# Layers, lowest first:
#   core    the frame: errors, Tuner/Placement, TunableSlot/SlotBase, AdapterConfig, target matching,
#           whole-model operations
#   slots   the frozen ops: Linear, Embedding, Conv2d, LayerNorm
#   nn      building blocks made of slots: attention, FFN, block, RMSNorm, batch context
#   tuners  one header per method, and the method registry
#   io      safetensors, adapter files, checkpoint merge
#   serve   many adapters at once: mixed batches (each row its own adapter), the adapter pool
#   text    Unicode, tokenizers, labelled text files
#   models  the model zoo and whole-checkpoint loading
#   train   training helpers
#   subspace  adapters as flat vectors, training in subspaces (arXiv 2012.13255, 2210.13311)
# peft.hpp, the umbrella, may include anything.
set(layers core slots nn tuners io serve text models train subspace)
set(root "${PEFT_SOURCE}/include/peft")
file(GLOB_RECURSE headers RELATIVE "${root}" "${root}/*.hpp")
list(SORT headers)
set(problems "")
function(layer_of path out)
  string(REGEX REPLACE "/.*" "" top "${path}")
  list(FIND layers "${top}" i)
  set(${out} ${i} PARENT_SCOPE)
endfunction()
list(LENGTH headers count)
foreach(h IN LISTS headers)
  if(h STREQUAL "peft.hpp")
    continue()
  endif()
  layer_of("${h}" mine)
  if(mine EQUAL -1)
    list(APPEND problems "${h}: not inside a layer folder (${layers})")
    continue()
  endif()
  file(STRINGS "${root}/${h}" incs REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]peft/")
  foreach(line IN LISTS incs)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]peft/([^>\"]+)[>\"].*" "\\1" dep "${line}")
    layer_of("${dep}" theirs)
    if(NOT EXISTS "${root}/${dep}")
      list(APPEND problems "${h}: includes peft/${dep}, which does not exist")
    elseif(theirs EQUAL -1)
      list(APPEND problems "${h}: includes peft/${dep}, which is in no layer")
    elseif(theirs GREATER mine)
      list(GET layers ${mine} a)
      list(GET layers ${theirs} b)
      list(APPEND problems "${h} (${a}) includes peft/${dep} (${b}), a higher layer")
    endif()
    if(h STREQUAL "io/adapter_io.hpp" AND dep MATCHES "^tuners/" AND NOT dep STREQUAL "tuners/registry.hpp")
      list(APPEND problems "io/adapter_io.hpp includes peft/${dep}: the file layer finds methods through the registry")
    endif()
  endforeach()
endforeach()
if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "layering violations:\n  ${text}")
endif()
list(JOIN layers " < " order)
message(STATUS "${count} headers, layers ${order}: no violations")
